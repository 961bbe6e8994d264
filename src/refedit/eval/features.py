"""Feature extractors for identity and distribution scores, all behind one interface:

    extractor(images) -> (N, D) float      images: (N, 3, H, W) in [-1, 1], any size
    extractor.dim, extractor.name

- `ToyworldProbe` (default, 'probe'): a small CNN trained once on toyworld object crops to classify
  shape x colour x pattern, trained with the toyworld foundations (`refedit.foundations`). Its 128-d embedding is the
  toyworld stand-in for CLIP / DINO: distances in it measure whether the object's identity survived.
- `ClipFeatures` ('clip'): CLIP image embeddings (L2-normalised) from a local transformers directory
  (ViT-B/32 reproduces Paint-by-Example's CLIP-FID and CLIP score, MimicBrush's CLIP-I).
- `DinoFeatures` ('dino'): DINOv2 CLS token from a local transformers directory (MimicBrush's DINO-I).
- `InceptionFeatures` ('inception'): a local TorchScript Inception file, because torch-fidelity (the
  weights torchmetrics' default FID uses) is not installed and needs torchvision.

Nothing is downloaded: every extractor but the probe needs a local path.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES = ("probe", "clip", "dino", "inception")


class FeatureExtractor(nn.Module):
    """Frozen, batched feature extraction: inputs go to the model's device in chunks of `batch_size`."""

    name: str = "features"
    dim: int = 0
    batch_size: int = 64

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name} features: images must be (N, 3, H, W) in [-1, 1], got "
                             f"{tuple(images.shape)}")
        dev = self._device()
        outs = [self._features(chunk.to(dev).float()).float() for chunk in images.split(self.batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, self.dim, device=dev)


def _resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    down = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=down)


# ---------------------------------------------------------------------------------------------- the probe
PROBE_VERSION = "toyworld-probe-v1"
# (channels, kernel, stride) per conv block: 48 -> 24 -> 12 -> 12 -> 6 -> 6 px
PROBE_LAYERS = ((32, 5, 2), (64, 3, 2), (64, 3, 1), (128, 3, 2), (128, 3, 1))


def _attribute_classes() -> dict[str, int]:
    from refedit.data.toyworld import COLOUR_NAMES, PATTERNS, SHAPES

    return {"shape": len(SHAPES), "colour": len(COLOUR_NAMES), "pattern": len(PATTERNS)}


class ToyworldProbe(FeatureExtractor):
    """5 conv blocks (BatchNorm + ReLU; a 5x5 stride-2 stem keeps full-resolution detail) -> 3x3 grid and
    global max -> linear -> `dim` features, with one linear head per toyworld attribute (shape, colour,
    pattern). Inputs are resized to `image_size` (48 px: circles and hexagons differ by ~2 px at 32 px)."""

    name = "probe"

    def __init__(self, image_size: int = 48, layers: Sequence[Sequence[int]] = PROBE_LAYERS, dim: int = 128,
                 grid: int = 3, classes: Mapping[str, int] | None = None):
        super().__init__()
        self.image_size = int(image_size)
        self.layers = tuple(tuple(int(v) for v in spec) for spec in layers)  # (channels, kernel, stride)
        self.grid = int(grid)
        self.classes = dict(classes or _attribute_classes())
        convs: list[nn.Module] = []
        c_in = 3
        for c, k, st in self.layers:
            convs += [nn.Conv2d(c_in, c, k, stride=st, padding=k // 2, bias=False), nn.BatchNorm2d(c),
                      nn.ReLU(inplace=True)]
            c_in = c
        self.net = nn.Sequential(*convs)
        # a spatial (not only global-average) embedding: shape is a layout of edges, which global average
        # pooling of small receptive fields turns into texture statistics
        self.embed = nn.Sequential(nn.Linear(c_in * (self.grid**2 + 1), dim, bias=False), nn.BatchNorm1d(dim),
                                   nn.ReLU(inplace=True))
        self.dim = int(dim)
        self.heads = nn.ModuleDict({k: nn.Linear(self.dim, n) for k, n in self.classes.items()})
        self.eval()

    def _embed(self, h: torch.Tensor) -> torch.Tensor:
        # the grid keeps the layout (shape); the global max keeps local evidence anywhere (a corner, a dot)
        pooled = [F.adaptive_avg_pool2d(h, self.grid).flatten(1), h.amax(dim=(-2, -1))]
        return self.embed(torch.cat(pooled, 1))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(self.net(_resize(x, self.image_size)))

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self._features(images)
        return {k: h(f) for k, h in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.argmax(-1) for k, v in self.logits(images.to(self._device()).float()).items()}

    def config(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "layers": [list(v) for v in self.layers], "dim": self.dim,
                "grid": self.grid, "classes": self.classes}

    def save(self, directory: str | os.PathLike, info: Mapping[str, Any] | None = None) -> Path:
        """Write probe.safetensors + probe.json (config, version, training info) into `directory`."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(d / "probe.safetensors"))
        meta = {"version": PROBE_VERSION, "config": self.config(), **dict(info or {})}
        (d / "probe.json").write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ToyworldProbe:
        from safetensors.torch import load_file

        d = Path(os.path.expanduser(str(directory)))
        if not (d / "probe.json").is_file() or not (d / "probe.safetensors").is_file():
            raise FileNotFoundError(f"no toyworld probe in '{d}' (expected probe.json and probe.safetensors; "
                                    "stage 1 builds it: make foundations, or refedit.foundations.ensure_foundations)")
        cfg = json.loads((d / "probe.json").read_text())["config"]
        probe = cls(image_size=cfg["image_size"], layers=cfg["layers"], dim=cfg["dim"], grid=cfg["grid"],
                    classes=cfg["classes"])
        probe.load_state_dict(load_file(str(d / "probe.safetensors")))
        return probe.eval().requires_grad_(False)


def square_crops(images: torch.Tensor, boxes: Sequence[Sequence[float] | None], size: int,
                 margin: float = 0.06) -> torch.Tensor:
    """The square window around each pixel box [x0, y0, x1, y1) (toyworld's reference window: the longer side
    grown by `margin` per side and 1 px each side), resampled to size x size with edge replication; None = the
    whole image. (N,3,size,size)."""
    h, w = images.shape[-2:]
    thetas = []
    for box in boxes:
        if box is None:
            thetas.append([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        side = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * margin) + 2.0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        thetas.append([[side / w, 0.0, 2 * cx / w - 1], [0.0, side / h, 2 * cy / h - 1]])
    theta = torch.tensor(thetas, dtype=torch.float32)
    grid = F.affine_grid(theta, [len(images), 3, size, size], align_corners=False)
    return F.grid_sample(images.float().cpu(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class ObjectLocator(nn.Module):
    """Where the toyworld objects of a frame are: a small dilated-convolution network giving a per-pixel object
    logit (N,1,H,W). `crop_largest` cuts the square window around the largest object region out of each image,
    the window `ToyworldProbe` classifies: attribute accuracy of a generated frame without knowing where its
    object was drawn."""

    def __init__(self, channels: int = 24):
        super().__init__()
        c = self.channels = int(channels)
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, 1, 1))
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @torch.no_grad()
    def crop_largest(self, images: torch.Tensor, size: int = 48, margin: float = 0.06
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(crops (N,3,size,size), found (N,) bool). The window is the largest connected object region's box,
        squared, grown by `margin` per side and 1 px (toyworld's reference window); an image with no object
        region gives the whole frame and found=False."""
        import cv2
        import numpy as np

        dev = next(self.parameters()).device
        prob = torch.cat([torch.sigmoid(self(c.to(dev).float())) for c in images.split(64)])[:, 0].cpu().numpy()
        boxes, found = [], []
        for p in prob:
            n, _, stats, _ = cv2.connectedComponentsWithStats((p > 0.5).astype(np.uint8), connectivity=8)
            if n <= 1:
                boxes.append(None)
                found.append(False)
                continue
            k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            x0, y0, bw, bh = (int(v) for v in stats[k, :4])
            boxes.append((x0, y0, x0 + bw, y0 + bh))
            found.append(True)
        return square_crops(images, boxes, size, margin), torch.tensor(found)

    def save(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(d / "locator.safetensors"))
        (d / "locator.json").write_text(json.dumps({"version": PROBE_VERSION, "channels": self.channels}))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ObjectLocator:
        from safetensors.torch import load_file

        d = Path(os.path.expanduser(str(directory)))
        if not (d / "locator.json").is_file():
            raise FileNotFoundError(f"no toyworld object locator in '{d}' (expected locator.json and "
                                    "locator.safetensors, written by the toyworld foundations)")
        loc = cls(channels=json.loads((d / "locator.json").read_text())["channels"])
        loc.load_state_dict(load_file(str(d / "locator.safetensors")))
        return loc.eval().requires_grad_(False)


def probe_info(cache_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(os.path.expanduser(str(cache_dir))) / "probe.json").read_text())


# ------------------------------------------------------------------------------------ pretrained networks
def _local_dir(path: str | os.PathLike | None, option: str, what: str) -> Path:
    if path is None or str(path) == "":
        raise FileNotFoundError(f"feature extractor '{option}' needs local weights: pass path=<dir> "
                                f"({what}); nothing is downloaded")
    p = Path(os.path.expanduser(str(path)))
    if not p.is_dir():
        raise FileNotFoundError(f"feature extractor '{option}': '{p}' is not a directory ({what})")
    return p


def _preprocessor(d: Path, mean: tuple[float, ...], std: tuple[float, ...], size: int
                  ) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Mean, std and input size from a saved preprocessor_config.json (read as JSON: no image-processor
    class, which may want torchvision), else the given defaults."""
    f = d / "preprocessor_config.json"
    if not f.is_file():
        return mean, std, size
    cfg = json.loads(f.read_text())
    crop = cfg.get("crop_size") or cfg.get("size") or {}
    if isinstance(crop, Mapping):
        size = int(crop.get("height") or crop.get("shortest_edge") or size)
    elif isinstance(crop, int):
        size = crop
    return tuple(cfg.get("image_mean") or mean), tuple(cfg.get("image_std") or std), size


class _Normalised(FeatureExtractor):
    def _setup_norm(self, mean: tuple[float, ...], std: tuple[float, ...], size: int) -> None:
        self.image_size = int(size)
        self.register_buffer("mean", torch.tensor(mean).float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).float().view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize((x + 1) / 2, self.image_size, mode="bicubic").clamp(0, 1)
        return (x - self.mean) / self.std


class ClipFeatures(_Normalised):
    """L2-normalised CLIP image embeddings. `path`: a CLIPModel dir (e.g. openai/clip-vit-base-patch32 saved
    locally), a CLIPVisionModelWithProjection dir, or a diffusers-style root with image_encoder/ (the
    toyworld foundations). Images are resized (bicubic) to the model's image_size and CLIP-normalised
    (preprocessor_config.json's statistics when present)."""

    name = "clip"

    def __init__(self, path: str | os.PathLike | None):
        super().__init__()
        from transformers import CLIPModel, CLIPVisionModelWithProjection

        d = _local_dir(path, "clip", "a transformers CLIP directory, e.g. openai/clip-vit-base-patch32")
        if not (d / "config.json").is_file() and (d / "image_encoder" / "config.json").is_file():
            proc_dir = d / "feature_extractor"
            d = d / "image_encoder"
        else:
            proc_dir = d
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"feature extractor 'clip': no config.json in '{d}'")
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
        if model_type == "clip":  # a vision tower loaded alone would lose the top-level projection_dim
            full = CLIPModel.from_pretrained(str(d))
            self.vision, self.projection = full.vision_model, full.visual_projection
            vcfg = full.config.vision_config
            del full
        elif model_type == "clip_vision_model":
            vm = CLIPVisionModelWithProjection.from_pretrained(str(d))
            self.vision, self.projection = vm.vision_model, vm.visual_projection
            vcfg = vm.config
        else:
            raise ValueError(f"feature extractor 'clip': '{d}' holds model_type {model_type!r}, expected "
                             "'clip' or 'clip_vision_model'")
        mean, std, _ = _preprocessor(proc_dir, CLIP_MEAN, CLIP_STD, 0)
        self._setup_norm(mean, std, int(vcfg.image_size))  # CLIP's position embeddings fix the input size
        self.dim = int(self.projection.out_features)
        self.eval().requires_grad_(False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        px = self.preprocess(x).to(self.projection.weight.dtype)
        pooled = self.vision(pixel_values=px).pooler_output
        return F.normalize(self.projection(pooled).float(), dim=-1)


class DinoFeatures(_Normalised):
    """DINOv2 CLS token (after the final layer norm) from a local transformers Dinov2Model directory. Input
    size and statistics from its preprocessor_config.json, else 224 px and ImageNet mean / std."""

    name = "dino"

    def __init__(self, path: str | os.PathLike | None, image_size: int = 224):
        super().__init__()
        from transformers import Dinov2Model

        d = _local_dir(path, "dino", "a transformers Dinov2Model directory, e.g. facebook/dinov2-base")
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"feature extractor 'dino': no config.json in '{d}'")
        self.model = Dinov2Model.from_pretrained(str(d))
        self._setup_norm(*_preprocessor(d, IMAGENET_MEAN, IMAGENET_STD, image_size))
        self.dim = int(self.model.config.hidden_size)
        self.eval().requires_grad_(False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        px = self.preprocess(x).to(next(self.model.parameters()).dtype)
        return self.model(pixel_values=px).last_hidden_state[:, 0]


class InceptionFeatures(FeatureExtractor):
    """Inception-v3 pool features from a local TorchScript file, e.g. NVIDIA's `inception-2015-12-05.pt`
    (StyleGAN2-ADA's FID detector: called as `m(images_uint8_range, return_features=True)` -> (N, 2048),
    resizing to 299 px inside). Images are passed as float in [0, 255], NCHW. Used because torch-fidelity
    (torchmetrics' own Inception) is not installed here and needs torchvision."""

    name = "inception"

    def __init__(self, path: str | os.PathLike | None):
        super().__init__()
        if path is None or str(path) == "":
            raise FileNotFoundError("feature extractor 'inception' needs a local TorchScript Inception file: "
                                    "pass path=<file.pt> (e.g. StyleGAN2-ADA's inception-2015-12-05.pt); "
                                    "torch-fidelity is not installed")
        p = Path(os.path.expanduser(str(path)))
        if not p.is_file():
            raise FileNotFoundError(f"feature extractor 'inception': '{p}' is not a file (a TorchScript .pt)")
        self.model = torch.jit.load(str(p), map_location="cpu").eval()
        self._kw: dict[str, Any] = {"return_features": True}
        try:
            probe = self._call(torch.zeros(1, 3, 299, 299))
        except RuntimeError:  # a module whose forward takes no return_features flag
            self._kw = {}
            probe = self._call(torch.zeros(1, 3, 299, 299))
        self.dim = int(probe.shape[-1])

    def _device(self) -> torch.device:
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            return t.device
        return torch.device("cpu")

    def _call(self, x255: torch.Tensor) -> torch.Tensor:
        return self.model(x255, **self._kw).reshape(x255.shape[0], -1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(((x + 1) * 127.5).clamp(0, 255))


# ------------------------------------------------------------------------------------------------ factory
def build_feature_extractor(name: str = "probe", path: str | os.PathLike | None = None,
                            cache_dir: str | os.PathLike | None = None) -> FeatureExtractor:
    """'probe' (default): the probe in `path` if given, else the one in `cache_dir` (the foundations' probe/);
    'clip' / 'dino': a local transformers directory; 'inception': a local TorchScript file."""
    key = (name or "probe").lower()
    if key == "probe":
        if path:
            return ToyworldProbe.load(path)
        if cache_dir is None:
            raise ValueError("feature extractor 'probe' needs cache_dir (where the probe is cached) or path")
        return ToyworldProbe.load(cache_dir)
    if key == "clip":
        return ClipFeatures(path)
    if key == "dino":
        return DinoFeatures(path)
    if key == "inception":
        return InceptionFeatures(path)
    raise ValueError(f"unknown feature extractor '{name}'; valid: {', '.join(FEATURES)}")


__all__ = ["FEATURES", "ClipFeatures", "DinoFeatures", "FeatureExtractor", "InceptionFeatures", "ObjectLocator",
           "ToyworldProbe", "build_feature_extractor", "probe_info", "square_crops"]
