"""Images with object boxes: COCO-format ``instances.json`` and the OpenImages box CSV.

These are *boxed sources*: each item is a raw dict ``{image (H,W,3) uint8 RGB, boxes (N,4) float xyxy px,
categories list[str], path, image_id}``. Turn them into EditBatch samples with
:class:`refedit.data.self_reference.SelfReferenceDataset` (Paint-by-Example's self-supervised pairs).

Boxes are kept when their normalised area lies in ``[min_area, max_area]`` (Paint-by-Example: 0.02-0.8);
images left with no box are dropped from the index. A box outside its image (beyond ``tol`` px, or
outside ``[0, 1]`` for OpenImages) is bad data: dropped with a warning naming the file and counted
(``on_error=skip``) or fatal (``on_error=raise``). The image size is checked against the annotation
when the image is read.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refedit.data.errors import AnnotationError, BoxOutsideImageError, MissingFileError, RobustDataset
from refedit.data.io import read_image, read_json
from refedit.data.transforms import boxes_inside


@dataclass
class BoxRecord:
    path: str
    image_id: str | int
    boxes: np.ndarray  # (N, 4) xyxy; pixels, or [0, 1] when ``normalized``
    categories: list[str]
    width: int | None = None
    height: int | None = None
    normalized: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class BoxedImages(RobustDataset):
    """Base of the boxed sources: holds :class:`BoxRecord`s, reads an image and its boxes in pixels."""

    records: list[BoxRecord]

    def __init__(self, *, min_area: float = 0.02, max_area: float = 0.8, tol: float = 1.0,
                 on_error: str = "skip", seed: int = 0) -> None:
        super().__init__(on_error=on_error, seed=seed)
        if not 0 <= min_area <= max_area <= 1:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}")
        self.min_area, self.max_area, self.tol = float(min_area), float(max_area), float(tol)
        self.records = []

    def __len__(self) -> int:
        return len(self.records)

    def _keep(self, rec: BoxRecord) -> BoxRecord | None:
        """Area filter; boxes outside the image are reported as bad data (by file)."""
        if len(rec.boxes) == 0:
            return None
        if rec.normalized:
            inside = boxes_inside(rec.boxes, (1, 1), tol=1e-3)
            area = (rec.boxes[:, 2] - rec.boxes[:, 0]) * (rec.boxes[:, 3] - rec.boxes[:, 1])
        elif rec.width and rec.height:
            inside = boxes_inside(rec.boxes, (rec.height, rec.width), tol=self.tol)
            area = (rec.boxes[:, 2] - rec.boxes[:, 0]) * (rec.boxes[:, 3] - rec.boxes[:, 1])
            area = area / float(rec.width * rec.height)
        else:  # size unknown until read: checked in load()
            inside = np.ones(len(rec.boxes), dtype=bool)
            area = np.full(len(rec.boxes), (self.min_area + self.max_area) / 2)
        if not inside.all():
            bad = rec.boxes[~inside][0].round(3).tolist()
            self.report(BoxOutsideImageError(rec.path, f"{int((~inside).sum())} box(es), e.g. {bad}"))
        keep = inside & (area >= self.min_area) & (area <= self.max_area)
        if not keep.any():
            return None
        rec.boxes = rec.boxes[keep].astype(np.float32)
        rec.categories = [c for c, k in zip(rec.categories, keep) if k]
        return rec

    def load(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = read_image(rec.path)
        h, w = image.shape[:2]
        cats = list(rec.categories)
        if rec.normalized:
            boxes = rec.boxes * np.array([w, h, w, h], dtype=np.float32)
        else:
            if rec.width and rec.height and (rec.width, rec.height) != (w, h):
                raise AnnotationError(rec.path, f"annotation says {rec.width}x{rec.height}, image is {w}x{h}")
            boxes = rec.boxes.copy()
            inside = boxes_inside(boxes, (h, w), tol=self.tol)
            if not inside.all():
                raise BoxOutsideImageError(rec.path, f"box {boxes[~inside][0].round(1).tolist()} in {w}x{h}")
            if not (rec.width and rec.height):  # area filter postponed until the size was known
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(w * h)
                ok = (area >= self.min_area) & (area <= self.max_area)
                if not ok.any():
                    raise AnnotationError(rec.path, f"no box with area in [{self.min_area}, {self.max_area}]")
                boxes, cats = boxes[ok], [c for c, k in zip(cats, ok) if k]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return {"image": image, "boxes": boxes, "categories": cats, "path": rec.path, "image_id": rec.image_id}


class CocoBoxes(BoxedImages):
    """COCO-format ``instances.json`` (``images``, ``annotations`` with ``bbox = [x, y, w, h]``, ``categories``).

    ``image_root`` defaults to the JSON's folder; ``file_name`` is resolved against it. Crowd boxes are
    skipped unless ``include_crowd``; ``categories`` optionally restricts to those names.
    """

    def __init__(self, annotations: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                 min_area: float = 0.02, max_area: float = 0.8, include_crowd: bool = False,
                 categories: list[str] | None = None, tol: float = 1.0, on_error: str = "skip",
                 seed: int = 0) -> None:
        super().__init__(min_area=min_area, max_area=max_area, tol=tol, on_error=on_error, seed=seed)
        ann_path = Path(annotations)
        root = Path(image_root) if image_root else ann_path.parent
        data = read_json(ann_path)
        for key in ("images", "annotations"):
            if key not in data:
                raise AnnotationError(ann_path, f"no '{key}' list: not a COCO instances file")
        names = {c["id"]: c.get("name", "") for c in data.get("categories", [])}
        wanted = set(categories) if categories else None
        per_image: dict[Any, list[dict]] = defaultdict(list)
        for a in data["annotations"]:
            if a.get("iscrowd", 0) and not include_crowd:
                continue
            if wanted is not None and names.get(a.get("category_id"), "") not in wanted:
                continue
            per_image[a["image_id"]].append(a)
        for img in data["images"]:
            anns = per_image.get(img["id"])
            if not anns:
                continue
            path = str(root / img["file_name"])
            try:
                boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                   a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=np.float32)
            except (KeyError, IndexError, TypeError) as e:
                self.report(AnnotationError(path, f"malformed bbox in {ann_path.name}: {e}"))
                continue
            rec = BoxRecord(path=path, image_id=img["id"], boxes=boxes,
                            categories=[names.get(a.get("category_id"), "") for a in anns],
                            width=img.get("width"), height=img.get("height"))
            rec = self._keep(rec)
            if rec is not None:
                self.records.append(rec)
        if not self.records:
            raise AnnotationError(ann_path, f"no image has a box with area in [{min_area}, {max_area}]")


class OpenImagesBoxes(BoxedImages):
    """OpenImages box CSV (``ImageID, ..., LabelName, ..., XMin, XMax, YMin, YMax, ..., IsGroupOf, ...``,
    normalised coordinates). Images are ``image_root/<ImageID><image_ext>``. ``class_descriptions`` is the
    ``LabelName,DisplayName`` CSV (with or without header) that turns label ids into caption words."""

    def __init__(self, boxes_csv: str | os.PathLike, image_root: str | os.PathLike, *,
                 class_descriptions: str | os.PathLike | None = None, image_ext: str = ".jpg",
                 min_area: float = 0.02, max_area: float = 0.8, include_group: bool = True,
                 max_rows: int | None = None, on_error: str = "skip", seed: int = 0) -> None:
        super().__init__(min_area=min_area, max_area=max_area, on_error=on_error, seed=seed)
        csv_path, root = Path(boxes_csv), Path(image_root)
        if not csv_path.is_file():
            raise MissingFileError(csv_path)
        names: dict[str, str] = {}
        if class_descriptions is not None:
            if not Path(class_descriptions).is_file():
                raise MissingFileError(class_descriptions)
            with open(class_descriptions, newline="", encoding="utf-8") as f:
                for row in csv.reader(f):
                    if len(row) >= 2 and row[0] != "LabelName":
                        names[row[0]] = row[1]
        per_image: dict[str, list[tuple[list[float], str]]] = defaultdict(list)
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            need = ["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"]
            missing = [c for c in need if c not in header]
            if missing:
                raise AnnotationError(csv_path, f"missing column(s) {missing}; header is {header}")
            col = {c: header.index(c) for c in header}
            g = col.get("IsGroupOf")
            for n, row in enumerate(reader, 2):
                if max_rows is not None and n - 1 > max_rows:
                    break
                try:
                    if g is not None and not include_group and row[g] == "1":
                        continue
                    xyxy = [float(row[col["XMin"]]), float(row[col["YMin"]]), float(row[col["XMax"]]),
                            float(row[col["YMax"]])]
                    per_image[row[col["ImageID"]]].append((xyxy, row[col["LabelName"]]))
                except (IndexError, ValueError) as e:
                    self.report(AnnotationError(csv_path, f"line {n}: {e}"))
        for image_id, items in per_image.items():
            rec = BoxRecord(path=str(root / f"{image_id}{image_ext}"), image_id=image_id,
                            boxes=np.array([b for b, _ in items], dtype=np.float32),
                            categories=[names.get(lab, "") for _, lab in items], normalized=True,
                            extra={"labels": [lab for _, lab in items]})
            rec = self._keep(rec)
            if rec is not None:
                self.records.append(rec)
        if not self.records:
            raise AnnotationError(csv_path, f"no image has a box with area in [{min_area}, {max_area}]")
