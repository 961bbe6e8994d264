"""Feature extractors for identity and distribution scores, all behind one interface:

    extractor(images) -> (N, D) float      images: (N, 3, H, W) in [-1, 1], any size
    extractor.dim, extractor.name

- `ToyworldProbe` (default, 'probe'): a small CNN trained once on toyworld object crops to classify
  shape x colour x pattern, cached like the foundations (`ensure_probe`). Its 128-d embedding is the
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
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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
                                    "build one with refedit.eval.features.ensure_probe)")
        cfg = json.loads((d / "probe.json").read_text())["config"]
        probe = cls(image_size=cfg["image_size"], layers=cfg["layers"], dim=cfg["dim"], grid=cfg["grid"],
                    classes=cfg["classes"])
        probe.load_state_dict(load_file(str(d / "probe.safetensors")))
        return probe.eval().requires_grad_(False)


@dataclass
class ProbeConfig:
    num_train: int = 3000
    num_heldout: int = 1000
    reference_size: int = 48  # crops are rendered at this size (alias-free), then augmented
    image_size: int = 48
    layers: tuple[tuple[int, int, int], ...] = PROBE_LAYERS
    steps: int = 1000
    batch: int = 64
    lr: float = 5e-3
    background_removed: float = 0.5  # fraction of training crops shown with a black background
    blur: float = 0.3  # fraction of training crops resampled down to blur_min..1 x size and back up
    blur_min: float = 0.4
    seed: int = 0


def _probe_data(first_seed: int, n: int, ref_size: int, desc: str):
    """Object crops (reference of exemplar_inpaint_self), their object masks and attribute labels."""
    from tqdm.auto import tqdm

    from refedit.data.toyworld import build_sample

    imgs, masks, labels = [], [], []
    for seed in tqdm(range(first_seed, first_seed + n), desc=desc, leave=False):
        s = build_sample("exemplar_inpaint_self", seed, size=64, reference_size=ref_size)
        meta = s["meta"]
        if "labels" not in meta:
            raise KeyError(f"toyworld sample meta has no 'labels' (keys: {sorted(meta)})")
        imgs.append(s["reference"])
        masks.append(s["reference_mask"])
        labels.append([int(meta["labels"][k]) for k in ("shape", "colour", "pattern")])
    return torch.stack(imgs), torch.stack(masks), torch.tensor(labels)


def _augment(x: torch.Tensor, m: torch.Tensor, size: int, g: torch.Generator, black_p: float = 0.5,
             blur_p: float = 0.3, blur_min: float = 0.4) -> torch.Tensor:
    """Hue-preserving augmentation (colour is a label), per sample: background removed for a fraction
    `black_p` (identity crops are black outside the mask), a random similarity warp (any rotation, flip, zoom
    0.85-1.2x, shift), brightness scaling, and for 30% of samples a down-up resampling to 40-100% of the
    size, as for object regions cut from 64 px generated frames."""
    n = x.shape[0]
    x01 = (x + 1) / 2
    black = torch.rand(n, 1, 1, 1, generator=g) < black_p
    x01 = torch.where(black & (m < 0.5), torch.zeros_like(x01), x01)
    ang = torch.rand(n, generator=g) * 2 * torch.pi
    zoom = torch.empty(n).uniform_(0.85, 1.2, generator=g)  # > 1: the object appears smaller
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    shift = torch.empty(n, 2).uniform_(-0.1, 0.1, generator=g)
    cos, sin = torch.cos(ang) * zoom, torch.sin(ang) * zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], -1),
                         torch.stack([sin * flip, cos, shift[:, 1]], -1)], 1)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    x01 = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)
    low = torch.randint(int(blur_min * size), size + 1, (n,), generator=g)
    blur = torch.rand(n, generator=g) < blur_p
    for r in low[blur].unique().tolist():
        sel = blur & (low == r)
        down = F.interpolate(x01[sel], size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        x01[sel] = F.interpolate(down, size=(size, size), mode="bilinear", align_corners=False)
    x01 = x01 * torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=g)
    return x01.clamp(0, 1) * 2 - 1


@torch.no_grad()
def _accuracy(probe: ToyworldProbe, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = probe.predict(x)
    return {k: round(float((pred[k] == y[:, i]).float().mean()), 4) for i, k in enumerate(probe.classes)}


def fit_probe(x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, cfg: ProbeConfig) -> ToyworldProbe:
    """Train a probe on crops x (N,3,h,w), object masks m and labels y (N, 3: shape, colour, pattern)."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        probe = ToyworldProbe(image_size=cfg.image_size, layers=cfg.layers)
        probe = probe.to(memory_format=torch.channels_last)  # ~1.5x faster convolutions on CPU
        probe.train()
        opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 2),
                                                    pct_start=0.15)
        bar = tqdm(range(cfg.steps), desc="probe: training", leave=False)
        for _ in bar:
            idx = torch.randint(0, len(x), (cfg.batch,), generator=g)
            xb = _augment(x[idx], m[idx], cfg.image_size, g, cfg.background_removed, cfg.blur, cfg.blur_min)
            logits = probe.logits(xb.contiguous(memory_format=torch.channels_last))
            loss = sum(F.cross_entropy(logits[k], y[idx, i]) for i, k in enumerate(probe.classes))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return probe.to(memory_format=torch.contiguous_format).eval().requires_grad_(False)


def evaluate_probe(probe: ToyworldProbe, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Held-out accuracy per attribute on the crops as rendered, with the background removed (as the
    identity metrics see them) and after a 16 px down-up resampling (a small object in a 64 px frame)."""
    black = torch.where(m > 0.5, x, torch.full_like(x, -1.0))
    low = F.interpolate(F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False),
                        size=x.shape[-2:], mode="bilinear", align_corners=False)
    return {"heldout_accuracy": _accuracy(probe, x, y),
            "heldout_accuracy_background_removed": _accuracy(probe, black, y),
            "heldout_accuracy_16px": _accuracy(probe, low, y), "num_heldout": int(len(x))}


def train_probe(cfg: ProbeConfig | None = None) -> tuple[ToyworldProbe, dict[str, Any]]:
    """Render crops, train, evaluate on held-out seeds (disjoint from the training seeds)."""
    cfg = cfg or ProbeConfig()
    t0 = time.time()
    base = 20_000_000 + cfg.seed * 1_000_000  # far from the benchmark's and the foundations' seeds
    x, m, y = _probe_data(base, cfg.num_train, cfg.reference_size, "probe: rendering train crops")
    hx, hm, hy = _probe_data(base + 500_000, cfg.num_heldout, cfg.reference_size, "probe: rendering held-out")
    t_data = time.time() - t0
    probe = fit_probe(x, m, y, cfg)
    t_fit = time.time() - t0 - t_data
    info = {**evaluate_probe(probe, hx, hm, hy), "train": asdict(cfg), "seconds": round(time.time() - t0, 1),
            "seconds_rendering": round(t_data, 1), "seconds_training": round(t_fit, 1),
            "threads": torch.get_num_threads()}
    return probe, info


def probe_ready(cache_dir: str | os.PathLike, cfg: ProbeConfig | None = None) -> bool:
    """True when `cache_dir` holds a probe of this version (and, when `cfg` is given, trained with exactly it)."""
    p = Path(os.path.expanduser(str(cache_dir)))
    if not (p / "probe.json").is_file() or not (p / "probe.safetensors").is_file():
        return False
    try:
        info = json.loads((p / "probe.json").read_text())
    except json.JSONDecodeError:
        return False
    if info.get("version") != PROBE_VERSION:
        return False
    from refedit.utils.config import stored_matches

    return cfg is None or stored_matches(info.get("train"), cfg)


def build_probe(cache_dir: str | os.PathLike, cfg: ProbeConfig | None = None) -> ToyworldProbe:
    """Train and save the probe into `cache_dir` atomically (a temp dir renamed into place)."""
    out = Path(os.path.expanduser(str(cache_dir)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    probe, info = train_probe(cfg)
    probe.save(tmp, info)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    bad = {k: v for k, v in info["heldout_accuracy"].items() if v < 0.95}
    if bad:
        log.warning("toyworld probe: held-out accuracy below 95%% for %s", bad)
    log.info("toyworld probe built in %.0f s: held-out accuracy %s", info["seconds"],
             info["heldout_accuracy"])
    return probe


def ensure_probe(cache_dir: str | os.PathLike, cfg: ProbeConfig | None = None) -> ToyworldProbe:
    """The cached probe of `cache_dir` (the probe's own directory: probe.safetensors + probe.json),
    trained first when missing, of an older version or trained with another `cfg` (ProbeConfig's steps and
    num_train trade accuracy for time)."""
    from refedit.utils.cache import build_once

    cfg = cfg or ProbeConfig()

    def build(p: Path) -> None:
        print(f"refedit: training the toyworld feature probe into {p} — once, about "
              f"{max(1, round(cfg.steps * 0.07 / 60))} min on a CPU", flush=True)
        build_probe(p, cfg)

    return ToyworldProbe.load(build_once(cache_dir, lambda p: probe_ready(p, cfg), build))


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
                            cache_dir: str | os.PathLike | None = None,
                            probe_cfg: ProbeConfig | None = None) -> FeatureExtractor:
    """'probe' (default): the probe in `path` if given, else the cached one in `cache_dir` (trained on first
    use); 'clip' / 'dino': a local transformers directory; 'inception': a local TorchScript file."""
    key = (name or "probe").lower()
    if key == "probe":
        if path:
            return ToyworldProbe.load(path)
        if cache_dir is None:
            raise ValueError("feature extractor 'probe' needs cache_dir (where the probe is cached) or path")
        return ensure_probe(cache_dir, probe_cfg)
    if key == "clip":
        return ClipFeatures(path)
    if key == "dino":
        return DinoFeatures(path)
    if key == "inception":
        return InceptionFeatures(path)
    raise ValueError(f"unknown feature extractor '{name}'; valid: {', '.join(FEATURES)}")


__all__ = ["FEATURES", "ClipFeatures", "DinoFeatures", "FeatureExtractor", "InceptionFeatures", "ProbeConfig",
           "ToyworldProbe", "build_feature_extractor", "build_probe", "ensure_probe", "evaluate_probe",
           "fit_probe", "probe_info", "probe_ready", "train_probe"]
