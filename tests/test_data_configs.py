"""Every real-data config composes through the real train config and instantiates working datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from refedit.batch import validate_sample
from refedit.data.io import write_image, write_mask
from refedit.data.synthetic import textured_image, write_coco_folder, write_video_folder
from refedit.utils.config import CONFIG_DIR, compose

REAL = ["coco_boxes", "openimages_boxes", "cocoee", "folder_benchmark", "video_pairs", "video_coarse", "video_clips"]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfgdata")
    coco = write_coco_folder(root / "coco", images=3, size=(96, 128))
    videos = write_video_folder(root / "videos", videos=2, size=(96, 128), frames=48)
    rng = np.random.default_rng(0)
    oi = root / "oi"
    (oi / "train").mkdir(parents=True)
    write_image(oi / "train" / "img1.jpg", textured_image((80, 120), rng))
    (oi / "boxes.csv").write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
                                  "IsGroupOf,IsDepiction,IsInside\nimg1,x,/m/01,1,0.1,0.6,0.2,0.7,0,0,0,0,0\n")
    (oi / "classes.csv").write_text("/m/01,Tortoise\n")
    ee = root / "cocoee"
    for d, name in (("GT", "1_GT.png"), ("Ref", "1_ref.png")):
        write_image(ee / d / name, textured_image((64, 64), rng))
    write_mask(ee / "Mask" / "1_mask.png", np.eye(64, dtype=bool))
    fb = root / "folder"
    write_image(fb / "source" / "a.png", textured_image((64, 64), rng))
    write_mask(fb / "mask" / "a.png", np.eye(64, dtype=bool))
    write_image(fb / "reference" / "a.png", textured_image((30, 40), rng))
    (fb / "captions.jsonl").write_text(json.dumps({"id": "a", "caption": "x"}) + "\n")
    return {
        "coco_boxes": [f"data.annotations={coco / 'instances.json'}", f"data.image_root={coco / 'images'}",
                       f"data.val_annotations={coco / 'instances.json'}", f"data.val_image_root={coco / 'images'}"],
        "openimages_boxes": [f"data.boxes_csv={oi / 'boxes.csv'}", f"data.image_root={oi / 'train'}",
                             f"data.class_descriptions={oi / 'classes.csv'}", f"data.val_boxes_csv={oi / 'boxes.csv'}",
                             f"data.val_image_root={oi / 'train'}"],
        "cocoee": [f"data.root={ee}"],
        "folder_benchmark": [f"data.root={fb}"],
        "video_pairs": [f"data.root={videos}", f"data.val_root={videos}"],
        "video_coarse": [f"data.root={videos}", f"data.val_root={videos}", "data.train_dataset.min_gap=0.5",
                         "data.train_dataset.max_gap=1.5", "data.val_dataset.min_gap=0.5", "data.val_dataset.max_gap=1.5"],
        "video_clips": [f"data.root={videos}", f"data.val_root={videos}"],
    }


def test_every_real_config_is_present_with_on_error_and_mandatory_paths():
    for name in REAL:
        cfg = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
        assert cfg.on_error == "skip", name
        assert "train_dataset" in cfg and "val_dataset" in cfg, name
        assert cfg.val_dataset._target_.startswith("refedit.data."), name
        assert any(OmegaConf.is_missing(cfg, k) for k in cfg), f"{name}: no mandatory (???) path"


@pytest.mark.parametrize("name", REAL)
def test_real_config_composes_and_instantiates(name, data_dirs):
    cfg = compose("train", [f"data={name}", *data_dirs[name]])
    for split in ("train_dataset", "val_dataset"):
        node = cfg.data[split]
        if node is None:
            assert split == "train_dataset" and name in ("cocoee", "folder_benchmark")  # evaluation-only data
            continue
        ds = instantiate(node, _convert_="all")
        assert len(ds) > 0 and ds.on_error == "skip"
        s = ds[0]
        validate_sample(s)
        size = cfg.backbone.resolution
        key = "video" if name == "video_clips" else "source"
        assert s[key].shape[-2:] == (size, size)


def test_missing_path_is_a_clear_error():
    cfg = compose("train", ["data=coco_boxes"])
    with pytest.raises(MissingMandatoryValue, match="annotations"):
        instantiate(cfg.data.train_dataset)


def test_real_config_batches_through_collate(data_dirs):
    from torch.utils.data import DataLoader

    from refedit.batch import collate_edit

    cfg = compose("train", ["data=coco_boxes", *data_dirs["coco_boxes"]])
    ds = instantiate(cfg.data.train_dataset, _convert_="all")
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_edit)))
    validate_sample(batch, batched=True)
    assert batch["reference"].shape == (2, 3, 224, 224) and len(batch["caption"]) == 2
