"""Published and custom evaluation benchmarks as EditBatch samples.

COCOEE (Paint-by-Example's benchmark), :class:`CocoEEBenchmark`::

    root/GT/<id>_GT.png      or root/GT_3500/...           the image (target; also the source)
    root/Ref/<id>_ref.png    or root/Ref_3500/...          the exemplar
    root/Mask/<id>_mask.png  or root/Mask_bbox_3500/...    255 = edit

Plain ``<id>.png`` (or .jpg) names are accepted in each folder too; an optional ``captions.jsonl``
(``{"id": ..., "caption": ...}``) fills ``caption`` (else "").

Custom benchmarks, :class:`FolderBenchmark` - either a folder::

    root/source/<id>.<ext>          required   the image to edit
    root/mask/<id>.<ext>            required   255 = edit, same size as source
    root/reference/<id>.<ext>       optional   exemplar (any size; resized to reference_size)
    root/reference_mask/<id>.<ext>  optional   255 = region of interest in the reference
    root/coarse/<id>.<ext>          optional   coarse edit (Magic Fixup), same size as source
    root/valid/<id>.<ext>           optional   255 = valid coarse pixel; all valid when absent
    root/target/<id>.<ext>          optional   ground truth; when absent target = source and
                                               meta["has_target"] is False
    root/captions.jsonl             optional   {"id": ..., "caption": ...} per line

or a JSONL manifest, one item per line, paths relative to the manifest's folder::

    {"id": "0001", "source": "img/0001.jpg", "mask": "m/0001.png", "reference": "r/0001.png",
     "coarse": "c/0001.png", "target": "gt/0001.png", "caption": "a red car"}

An optional key is emitted when every item has it (a batch must have the same keys); pass ``keys``
to demand a set explicitly, and an item lacking one is then skipped as bad data. All images of an item
must share the source's size (a mask of another size is bad data, never silently resized); the item is
then brought to ``size x size`` by ``fit`` (resize / pad / center_crop).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from refedit.data.errors import AnnotationError, MaskSizeError, MissingFileError, RobustDataset
from refedit.data.io import (
    IMAGE_EXTS,
    find_with_stem,
    image_to_tensor,
    list_files,
    mask_to_tensor,
    read_image,
    read_jsonl,
    read_mask,
)
from refedit.data.transforms import fit_square, resize, square_pad

COCOEE_DIRS = {"gt": ("GT", "GT_3500"), "ref": ("Ref", "Ref_3500"), "mask": ("Mask", "Mask_bbox_3500")}
OPTIONAL_KEYS = ("reference", "reference_mask", "coarse", "valid", "target")
IMAGE_ROLES = ("source", "reference", "coarse", "target")


def _find_dir(root: Path, names: tuple[str, ...], prefix: str) -> Path:
    for n in names:
        if (root / n).is_dir():
            return root / n
    cands = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith(prefix.lower()))
    if cands:
        return cands[0]
    raise MissingFileError(root / names[0], f"COCOEE folder not found (tried {', '.join(names)})")


def _captions(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for row in read_jsonl(path):
        key = row.get("id", row.get("image", row.get("file")))
        if key is not None:
            out[str(key)] = str(row.get("caption", ""))
    return out


def _fit_reference(img: np.ndarray, size: int, mask: np.ndarray | None, mode: str):
    if mode == "pad":
        img, _, ms, _ = square_pad(img, masks=None if mask is None else [mask])
        mask = None if ms is None else ms[0]
    elif mode != "resize":
        raise ValueError(f"reference_fit must be 'resize' or 'pad', got {mode!r}")
    img, _, ms = resize(img, (size, size), masks=None if mask is None else [mask])
    return img, None if ms is None else ms[0]


class CocoEEBenchmark(RobustDataset):
    """COCOEE: ``source = target = GT``, ``mask`` (1 = edit), ``reference`` resized to ``reference_size``."""

    def __init__(self, root: str | os.PathLike, size: int = 512, reference_size: int = 224, *,
                 fit: str = "resize", reference_fit: str = "resize", limit: int | None = None,
                 on_error: str = "skip", seed: int = 0) -> None:
        super().__init__(on_error=on_error, seed=seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(self.root, "COCOEE root is not a folder")
        self.size, self.reference_size, self.fit, self.reference_fit = size, reference_size, fit, reference_fit
        gt_dir = _find_dir(self.root, COCOEE_DIRS["gt"], "GT")
        ref_dir = _find_dir(self.root, COCOEE_DIRS["ref"], "Ref")
        mask_dir = _find_dir(self.root, COCOEE_DIRS["mask"], "Mask")
        self.captions = _captions(self.root / "captions.jsonl")
        self.items: list[dict[str, Any]] = []
        for gt in list_files(gt_dir, IMAGE_EXTS):
            sid = gt.stem[:-3] if gt.stem.endswith("_GT") else gt.stem
            ref = find_with_stem(ref_dir, [f"{sid}_ref", sid])
            mask = find_with_stem(mask_dir, [f"{sid}_mask", sid])
            if ref is None or mask is None:
                which = ref_dir / f"{sid}_ref.png" if ref is None else mask_dir / f"{sid}_mask.png"
                self.report(MissingFileError(which, f"counterpart of {gt}"))
                continue
            self.items.append({"id": sid, "gt": gt, "ref": ref, "mask": mask})
            if limit is not None and len(self.items) >= limit:
                break
        if not self.items:
            raise MissingFileError(gt_dir, "no complete COCOEE item (GT + Ref + Mask)")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict[str, Any]:
        it = self.items[index]
        gt = read_image(it["gt"])
        mask = read_mask(it["mask"])
        if mask.shape != gt.shape[:2]:
            raise MaskSizeError(it["mask"], f"mask {mask.shape[::-1]} vs image {gt.shape[1::-1]} ({it['gt'].name})")
        ref = read_image(it["ref"])
        img, _, (mask,) = fit_square(gt, self.size, self.fit, masks=[mask])
        ref, _ = _fit_reference(ref, self.reference_size, None, self.reference_fit)
        src = image_to_tensor(img)
        return {"source": src, "mask": mask_to_tensor(mask), "reference": image_to_tensor(ref),
                "target": src.clone(), "caption": self.captions.get(it["id"], ""),
                "meta": {"id": it["id"], "path": str(it["gt"]), "benchmark": "cocoee", "has_target": True}}


class FolderBenchmark(RobustDataset):
    """A custom benchmark from a folder or a JSONL manifest (layout in the module docstring)."""

    def __init__(self, root: str | os.PathLike, size: int = 512, reference_size: int = 224, *,
                 keys: list[str] | None = None, fit: str = "resize", reference_fit: str = "pad",
                 on_error: str = "skip", seed: int = 0) -> None:
        super().__init__(on_error=on_error, seed=seed)
        self.size, self.reference_size, self.fit, self.reference_fit = size, reference_size, fit, reference_fit
        root = Path(root)
        if root.is_file():
            self.items = self._from_manifest(root)
            where = root
        elif root.is_dir():
            self.items = self._from_folder(root)
            where = root / "source"
        else:
            raise MissingFileError(root, "benchmark root is neither a folder nor a JSONL manifest")
        if not self.items:
            raise MissingFileError(where, "no benchmark item (needs source + mask)")
        if keys is None:
            have = {k: sum(k in it for it in self.items) for k in OPTIONAL_KEYS}
            partial = {k: n for k, n in have.items() if 0 < n < len(self.items)}
            if partial:
                warnings.warn(f"{where}: optional key(s) present for only some of {len(self.items)} items "
                              f"{partial}; they are left out (pass keys=[...] to require them)", stacklevel=2)
            self.keys = [k for k, n in have.items() if n == len(self.items)]
        else:
            unknown = set(keys) - set(OPTIONAL_KEYS) - {"source", "mask", "caption"}
            if unknown:
                raise ValueError(f"unknown benchmark key(s) {sorted(unknown)}; known: {OPTIONAL_KEYS}")
            self.keys = [k for k in OPTIONAL_KEYS if k in keys]
        if "valid" in self.keys and "coarse" not in self.keys:
            self.keys.remove("valid")

    @staticmethod
    def _from_folder(root: Path) -> list[dict[str, Any]]:
        src_dir = root / "source"
        if not src_dir.is_dir():
            raise MissingFileError(src_dir, "folder benchmark needs source/ and mask/")
        captions = _captions(root / "captions.jsonl")
        items = []
        for src in list_files(src_dir, IMAGE_EXTS):
            it: dict[str, Any] = {"id": src.stem, "source": src,
                                  "mask": find_with_stem(root / "mask", [src.stem]) or root / "mask" / f"{src.stem}.png"}
            for k in OPTIONAL_KEYS:
                p = find_with_stem(root / k, [src.stem]) if (root / k).is_dir() else None
                if p is not None:
                    it[k] = p
            if src.stem in captions:
                it["caption"] = captions[src.stem]
            items.append(it)
        return items

    @staticmethod
    def _from_manifest(path: Path) -> list[dict[str, Any]]:
        base = path.parent
        items = []
        for n, row in enumerate(read_jsonl(path), 1):
            if "source" not in row or "mask" not in row:
                raise AnnotationError(path, f"item {n} needs 'source' and 'mask'")
            it: dict[str, Any] = {"id": str(row.get("id", n)), "caption": str(row.get("caption", ""))}
            for k in ("source", "mask", *OPTIONAL_KEYS):
                if row.get(k):
                    it[k] = base / row[k]
            items.append(it)
        return items

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict[str, Any]:
        it = self.items[index]
        for k in self.keys:
            if k not in it:
                raise MissingFileError(it["source"], f"item {it['id']} has no '{k}'")
        source = read_image(it["source"])
        hw = source.shape[:2]
        full = {"mask": read_mask(it["mask"])}
        if "valid" in self.keys:
            full["valid"] = read_mask(it["valid"])
        for k, m in full.items():
            if m.shape != hw:
                raise MaskSizeError(it[k], f"{k} {m.shape[::-1]} vs source {hw[::-1]} ({Path(it['source']).name})")
        images = {"source": source}
        for k in ("coarse", "target"):
            if k in self.keys:
                images[k] = read_image(it[k])
                if images[k].shape[:2] != hw:
                    raise AnnotationError(it[k], f"{k} {images[k].shape[1::-1]} vs source {hw[::-1]}")
        out: dict[str, Any] = {}
        mnames = list(full)
        for k, img in images.items():  # the same generator per image: the same window for random_crop
            ms = [full[n] for n in mnames] if k == "source" else None
            img, _, ms = fit_square(img, self.size, self.fit, rng=self.rng(index), masks=ms)
            out[k] = image_to_tensor(img)
            if ms is not None:
                out.update({n: mask_to_tensor(m) for n, m in zip(mnames, ms)})
        if "coarse" in self.keys and "valid" not in self.keys:
            out["valid"] = mask_to_tensor(np.ones((self.size, self.size), dtype=bool))
        if "reference" in self.keys:
            ref = read_image(it["reference"])
            rmask = None
            if "reference_mask" in self.keys:
                rmask = read_mask(it["reference_mask"])
                if rmask.shape != ref.shape[:2]:
                    raise MaskSizeError(it["reference_mask"], f"reference_mask {rmask.shape[::-1]} vs reference "
                                        f"{ref.shape[1::-1]}")
            ref, rmask = _fit_reference(ref, self.reference_size, rmask, self.reference_fit)
            out["reference"] = image_to_tensor(ref)
            if rmask is not None:
                out["reference_mask"] = mask_to_tensor(rmask)
        has_target = "target" in out
        if not has_target:
            out["target"] = out["source"].clone()
        out["caption"] = it.get("caption", "")
        out["meta"] = {"id": it["id"], "path": str(it["source"]), "benchmark": "folder", "has_target": has_target}
        return out
