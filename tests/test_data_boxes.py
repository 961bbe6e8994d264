"""COCO / OpenImages boxed sources: parsing, the Paint-by-Example area filter and every bad-data case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refedit.data.boxes import CocoBoxes, OpenImagesBoxes
from refedit.data.errors import AnnotationError, BadDataWarning, BoxOutsideImageError, CorruptFileError
from refedit.data.io import write_image
from refedit.data.self_reference import SelfReferenceDataset
from refedit.data.synthetic import textured_image


def _coco(tmp_path, boxes_per_image, sizes=None, names=("a.png", "b.png", "c.png")):
    rng = np.random.default_rng(0)
    imgs, anns = [], []
    for i, name in enumerate(names):
        h, w = (sizes or {}).get(name, (100, 200))
        write_image(tmp_path / "img" / name, textured_image((h, w), rng))
        imgs.append({"id": i + 1, "file_name": name, "width": 200, "height": 100})
        for b in boxes_per_image[i]:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 7, "bbox": b, "iscrowd": 0})
    anns.append({"id": 99, "image_id": 1, "category_id": 7, "bbox": [0, 0, 100, 50], "iscrowd": 1})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": [{"id": 7, "name": "zebra"}]}))
    return path


def test_coco_boxes_area_filter_and_pixel_boxes(tmp_path):
    # image area 20000: 0.02 -> 400 px^2, 0.8 -> 16000 px^2
    ann = _coco(tmp_path, [[[10, 10, 40, 30], [0, 0, 10, 10]], [[0, 0, 190, 95]], [[50, 20, 100, 60]]])
    ds = CocoBoxes(ann, tmp_path / "img")
    assert len(ds) == 2  # b.png has only a box above 0.8; the crowd box is ignored
    item = ds.load(0)
    assert item["path"].endswith("a.png") and item["image"].shape == (100, 200, 3)
    np.testing.assert_allclose(item["boxes"], [[10, 10, 50, 40]])  # xywh -> xyxy, the 100 px^2 box filtered out
    assert item["categories"] == ["zebra"]
    assert len(CocoBoxes(ann, tmp_path / "img", min_area=0.0, max_area=1.0)) == 3
    assert len(CocoBoxes(ann, tmp_path / "img", include_crowd=True).load(0)["boxes"]) == 2


def test_coco_box_outside_image_is_skipped_with_warning_naming_the_file(tmp_path):
    ann = _coco(tmp_path, [[[10, 10, 40, 30]], [[150, 60, 80, 50], [20, 20, 50, 50]], [[170, 10, 60, 40]]])
    with pytest.warns(BadDataWarning) as rec:
        ds = CocoBoxes(ann, tmp_path / "img")
    msgs = [str(w.message) for w in rec]
    assert any("b.png" in m and "box outside the image" in m for m in msgs)
    assert any("c.png" in m for m in msgs)
    assert [ds.load(i)["path"].split("/")[-1] for i in range(len(ds))] == ["a.png", "b.png"]
    np.testing.assert_allclose(ds.load(1)["boxes"], [[20, 20, 70, 70]])  # the good box of b.png survives
    assert ds.bad_samples_summary()["by_reason"] == {"box outside the image": 2}
    with pytest.raises(BoxOutsideImageError, match="b.png"):
        CocoBoxes(ann, tmp_path / "img", on_error="raise")


def test_corrupt_image_and_size_mismatch_are_skipped_and_counted(tmp_path):
    ann = _coco(tmp_path, [[[10, 10, 40, 30]]] * 3, sizes={"c.png": (120, 200)})
    (tmp_path / "img" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # truncated PNG
    src = CocoBoxes(ann, tmp_path / "img")
    ds = SelfReferenceDataset(src, size=32, reference_size=16)
    with pytest.warns(BadDataWarning) as rec:
        paths = [ds[i]["meta"]["path"].split("/")[-1] for i in range(3)]
    msgs = " | ".join(str(w.message) for w in rec)
    assert "b.png: corrupt or unreadable file" in msgs and "c.png: bad annotation" in msgs and "200x120" in msgs
    assert paths == ["a.png"] * 3  # the good image still comes through (and replaces the bad ones)
    assert ds.bad_samples_summary()["by_reason"] == {"corrupt or unreadable file": 1, "bad annotation": 1}
    strict = SelfReferenceDataset(CocoBoxes(ann, tmp_path / "img"), size=32, reference_size=16, on_error="raise")
    with pytest.raises(CorruptFileError, match="b.png"):
        strict[1]
    missing = SelfReferenceDataset(CocoBoxes(ann, tmp_path / "nowhere"), size=32, on_error="raise")
    with pytest.raises(Exception, match="missing file: .*nowhere/a.png"):
        missing[0]


def test_coco_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(AnnotationError, match="bad.json"):
        CocoBoxes(bad)
    (tmp_path / "x.json").write_text('{"foo": 1}')
    with pytest.raises(AnnotationError, match="no 'images' list"):
        CocoBoxes(tmp_path / "x.json")


def _openimages(tmp_path, rows):
    header = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
    lines = [header] + [f"{i},xclick,{lab},1,{x0},{x1},{y0},{y1},0,0,{g},0,0" for i, lab, x0, x1, y0, y1, g in rows]
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "classes.csv").write_text("/m/01,Tortoise\n/m/02,Container\n")
    rng = np.random.default_rng(0)
    for i in {r[0] for r in rows}:
        write_image(tmp_path / "train" / f"{i}.jpg", textured_image((80, 160), rng))


def test_openimages_csv_normalised_boxes_filter_and_names(tmp_path):
    _openimages(tmp_path, [
        ("img1", "/m/01", 0.1, 0.5, 0.2, 0.6, 0),  # area 0.16: kept
        ("img1", "/m/02", 0.0, 0.05, 0.0, 0.1, 0),  # area 0.005: too small
        ("img2", "/m/02", 0.0, 1.0, 0.0, 0.95, 0),  # area 0.95: too large -> img2 has no box
        ("img3", "/m/02", 0.2, 0.6, 0.1, 0.9, 1),  # group box
    ])
    ds = OpenImagesBoxes(tmp_path / "boxes.csv", tmp_path / "train", class_descriptions=tmp_path / "classes.csv")
    assert [r.image_id for r in ds.records] == ["img1", "img3"]
    item = ds.load(0)
    np.testing.assert_allclose(item["boxes"], [[16, 16, 80, 48]])  # [0, 1] -> pixels of the 160x80 image
    assert item["categories"] == ["Tortoise"]
    assert len(OpenImagesBoxes(tmp_path / "boxes.csv", tmp_path / "train", include_group=False)) == 1
    assert OpenImagesBoxes(tmp_path / "boxes.csv", tmp_path / "train").load(0)["categories"] == [""]


def test_openimages_box_outside_unit_square_and_bad_rows(tmp_path):
    _openimages(tmp_path, [("img1", "/m/01", 0.1, 0.5, 0.2, 0.6, 0), ("img2", "/m/01", 0.5, 1.3, 0.2, 0.6, 0)])
    with (tmp_path / "boxes.csv").open("a") as f:
        f.write("img3,xclick,/m/01,1,zero,0.5,0.1,0.5,0,0,0,0,0\n")
    with pytest.warns(BadDataWarning) as rec:
        ds = OpenImagesBoxes(tmp_path / "boxes.csv", tmp_path / "train")
    msgs = " | ".join(str(w.message) for w in rec)
    assert "img2.jpg: box outside the image" in msgs and "boxes.csv: bad annotation (line 4" in msgs
    assert [r.image_id for r in ds.records] == ["img1"]
    with pytest.raises(AnnotationError, match="missing column"):
        (tmp_path / "bad.csv").write_text("ImageID,XMin\nx,0\n")
        OpenImagesBoxes(tmp_path / "bad.csv", tmp_path / "train")
