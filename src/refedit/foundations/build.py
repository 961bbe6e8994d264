"""Build, cache and check the stage-1 foundations.

Layout of a foundations dir (one per budget name, `${paths.cache_dir}/foundations/<name>`):

    toy-sd/              a StableDiffusionPipeline root: vae/ text_encoder/ tokenizer/ unet/ (4-channel
                         text-to-image) scheduler/ image_encoder/ feature_extractor/ model_index.json
    toy-sd-inpainting/   a StableDiffusionInpaintPipeline root: the same parts, unet/ the 9-channel inpainting U-Net
    clip/                the whole CLIPModel (CLIP image features: `features=clip features_path=<dir>/clip`)
    probe/               the toyworld probe (probe.json, probe.safetensors) and the object locator
    foundations.json     version, budget, per-part wall time and held-out quality
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from refedit.backbone.encoders import clip_image_processor
from refedit.backbone.latents import inpaint_layout
from refedit.eval.features import ObjectLocator, ToyworldProbe
from refedit.foundations import data, prior, probe, quality, text, vae
from refedit.foundations.config import FoundationsConfig
from refedit.utils.cache import build_once
from refedit.utils.config import stored_matches

log = logging.getLogger(__name__)

FOUNDATIONS_VERSION = "toyworld-foundations-v3"
ROOTS = ("toy-sd", "toy-sd-inpainting")
PARTS = (*ROOTS, "clip", "probe")


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _split_clip(clip: CLIPModel) -> tuple[CLIPTextModel, CLIPVisionModelWithProjection]:
    """The text and vision towers as the separate models SD pipelines load (text_encoder/, image_encoder/)."""
    te = CLIPTextModel(clip.config.text_config)
    te.load_state_dict(clip.text_model.state_dict())
    vision = CLIPVisionModelWithProjection(clip.config.vision_config)
    vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    vision.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    return te.eval(), vision.eval()


def save_root(out: Path, pipeline_cls: type, vae_model: AutoencoderKL, text_encoder: CLIPTextModel,
              tokenizer: CLIPTokenizer, image_encoder: CLIPVisionModelWithProjection,
              unet: UNet2DConditionModel) -> None:
    """A complete diffusers model root that `pipeline_cls.from_pretrained(out)` loads as it is."""
    pipe = pipeline_cls(vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                        scheduler=DDIMScheduler(**prior.SCHEDULER), safety_checker=None,
                        feature_extractor=clip_image_processor(None, int(image_encoder.config.image_size)),
                        image_encoder=image_encoder, requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)


def _save_all(out: Path, vae_model, tok, clip, t2i, inpaint, locator) -> None:
    te, vision = _split_clip(clip)
    save_root(out / "toy-sd", StableDiffusionPipeline, vae_model, te, tok, vision, t2i)
    save_root(out / "toy-sd-inpainting", StableDiffusionInpaintPipeline, vae_model, te, tok, vision, inpaint)
    clip.save_pretrained(out / "clip")
    tok.save_pretrained(out / "clip")
    locator.save(out / "probe")


def _vocabulary() -> set[str]:
    from refedit.data.toyworld import vocabulary

    return set(vocabulary())


def _heldout(n_train: int) -> int:
    """Held-out set size: 1000, or a third of the training set for small (quick) budgets."""
    return max(16, min(1000, n_train // 3))


def build_foundations(out_dir: str | os.PathLike, cfg: FoundationsConfig) -> Path:
    """Train every stage-1 part and save them to `out_dir` atomically (a temp dir renamed into place)."""
    if not cfg.unet:
        raise ValueError("foundations.unet is empty: it is the toy SD U-Net architecture (a diffusers "
                         "UNet2DConditionModel config, conf/foundations/default.yaml)")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    device = training_device()
    t_start = time.time()
    parts: dict[str, dict[str, Any]] = {}

    def timed(name: str, t0: float, **quality_info: Any) -> None:
        parts[name] = {"seconds": round(time.time() - t0, 1), **quality_info}
        print(f"refedit: stage 1 {name}: {parts[name]}", flush=True)

    size = cfg.resolution
    tok = text.build_tokenizer(_vocabulary())

    t0 = time.time()
    frames = data.scenes(data.SEEDS["vae"], cfg.vae_images, size, "stage 1: rendering VAE frames")
    held_frames = data.scenes(data.SEEDS["vae"] + 900_000, 128, size, "stage 1: rendering VAE held-out")
    vae_model, vae_q = vae.train_vae(frames.images, held_frames.images, cfg, device)
    timed("vae", t0, **vae_q)

    t0 = time.time()
    crops = data.object_crops(data.SEEDS["clip"], cfg.clip_images, cfg.clip_image_size, "stage 1: rendering CLIP crops")
    held_crops = data.object_crops(data.SEEDS["clip_heldout"], _heldout(cfg.clip_images), cfg.clip_image_size,
                                   "stage 1: CLIP held-out")
    clip, clip_q = text.train_clip(crops, held_crops, tok, cfg, device)
    timed("clip", t0, **clip_q)

    t0 = time.time()
    pcrops = data.object_crops(data.SEEDS["probe"], cfg.probe_images, probe.PROBE_IMAGE_SIZE, "stage 1: probe crops")
    held_pcrops = data.object_crops(data.SEEDS["probe_heldout"], _heldout(cfg.probe_images), probe.PROBE_IMAGE_SIZE,
                                    "stage 1: probe held-out")
    probe_model = probe.train_probe(pcrops, cfg, device)
    probe_q = probe.evaluate_probe(probe_model, held_pcrops)
    timed("probe", t0, **probe_q)
    probe_model.save(tmp / "probe", {**probe_q, "seconds": parts["probe"]["seconds"]})

    t0 = time.time()
    scenes = data.scenes(data.SEEDS["prior"], cfg.prior_images, size, "stage 1: rendering prior frames",
                         single_object=cfg.prior_single_object, closeups=cfg.prior_closeups)
    locator = probe.train_locator(scenes, cfg, device)
    held_single = quality.heldout_single_objects(256, size)
    timed("locator", t0, rendered_real_frames=probe.located_accuracy(locator, probe_model, held_single.images,
                                                                     torch.tensor([o[0][2] for o in held_single.objects])))

    t0 = time.time()
    te, _ = _split_clip(clip)
    te = te.to(device)
    scale = float(vae_model.config.scaling_factor)
    moments = prior.latent_moments(vae_model.to(device), scenes.images, device)
    context = prior.embed_captions(tok, te, scenes.captions, device)
    null = prior.embed_captions(tok, te, [""], device)
    object_captions = sorted({cap for objs in scenes.objects for cap, _, _ in objs})
    object_context = dict(zip(object_captions, prior.embed_captions(tok, te, object_captions, device)))
    torch.manual_seed(cfg.seed + 4)
    t2i = UNet2DConditionModel.from_config(dict(cfg.unet))
    curve: list[dict[str, Any]] = []

    def evaluate_curve_point(step: int, ema: UNet2DConditionModel) -> None:
        if step not in cfg.prior_curve or step >= cfg.prior_steps:
            return
        t_eval = time.time()
        point = tmp / f"curve-{step}"
        save_root(point, StableDiffusionPipeline, vae_model.cpu(), te.cpu(), tok, _split_clip(clip)[1],
                  copy.deepcopy(ema).cpu())
        q = quality.text_to_image_quality(point, probe_model, locator, cfg.eval_captions, cfg.eval_steps,
                                          cfg.eval_guidance, seed=cfg.seed, device="cpu")
        shutil.rmtree(point)
        te.to(device)
        minutes = (t_eval - t_start - eval_seconds[0]) / 60
        eval_seconds[0] += time.time() - t_eval
        curve.append({"step": step, "stage1_minutes": round(minutes, 2), **q})
        print(f"refedit: stage 1 prior at step {step} ({minutes:.1f} min): {q['conditional']}", flush=True)

    eval_seconds = [0.0]
    t2i = prior.train_text_to_image(t2i, moments, context, null, scale, cfg, device, on_step=evaluate_curve_point)
    timed("text_to_image_unet", t0, curve_eval_seconds=round(eval_seconds[0], 1))

    t0 = time.time()
    inpaint = prior.train_inpainting(t2i, vae_model, scenes, moments, context, object_context, null, cfg, device)
    timed("inpainting_unet", t0)

    _save_all(tmp, vae_model.cpu(), tok, clip, t2i, inpaint, locator)
    t0 = t_quality = time.time()
    dev = str(device)
    q_t2i = quality.text_to_image_quality(tmp / "toy-sd", probe_model, locator, cfg.eval_captions, cfg.eval_steps,
                                          cfg.eval_guidance, seed=cfg.seed, device=dev,
                                          grid=tmp / "toy-sd-samples.png")
    q_inp = quality.inpainting_quality(tmp / "toy-sd-inpainting", probe_model, cfg.eval_captions, cfg.eval_steps,
                                       cfg.eval_guidance, seed=cfg.seed, device=dev)
    parts["text_to_image_unet"]["heldout"] = q_t2i
    minutes = (t_quality - t_start - eval_seconds[0]) / 60
    parts["text_to_image_unet"]["curve"] = curve + [{"step": cfg.prior_steps, "stage1_minutes": round(minutes, 2),
                                                     **q_t2i}]
    parts["inpainting_unet"]["heldout"] = q_inp
    timed("quality", t0)
    info = {"version": FOUNDATIONS_VERSION, "config": cfg.to_json(), "parts": parts,
            "seconds": round(time.time() - t_start, 1), "threads": torch.get_num_threads(), "device": dev}
    (tmp / "foundations.json").write_text(json.dumps(info, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("foundations built in %.0f s", info["seconds"])
    return out_dir


def foundations_ready(path: str | os.PathLike, cfg: FoundationsConfig | None = None) -> bool:
    """True when `path` holds foundations of this version (and, when `cfg` is given, of exactly that budget)."""
    p = Path(path)
    try:
        info = json.loads((p / "foundations.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("version") != FOUNDATIONS_VERSION or not all((p / part).is_dir() for part in PARTS):
        return False
    return cfg is None or stored_matches(info.get("config"), cfg)


def ensure_foundations(path: str | os.PathLike, cfg: FoundationsConfig) -> Path:
    """The cached foundations dir, built first when missing, of an older version or of another budget."""

    def build(p: Path) -> None:
        why = "a different version or budget is cached there" if (p / "foundations.json").is_file() else "once"
        print(f"refedit: building the toyworld foundations (toy Stable Diffusion: VAE, CLIP, probe, text-to-image "
              f"and inpainting U-Nets) into {p} ({why}; training on {training_device()})", flush=True)
        build_foundations(p, cfg)

    return build_once(path, lambda p: foundations_ready(p, cfg), build)


def foundations_info(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / "foundations.json").read_text())


def save_random_foundations(out_dir: str | os.PathLike, unet: dict[str, Any], resolution: int = 64, seed: int = 0,
                            latent_channels: int = 4,
                            words: tuple[str, ...] = ("a", "red", "blue", "green", "star", "circle", "striped",
                                                      "moving", "left", "right")) -> Path:
    """Untrained parts in exactly the layout `build_foundations` writes: for tests of the loading path and of
    everything that needs the parts but not their quality. `unet` is the toy U-Net architecture; its input and
    output widths follow `latent_channels` (the VAE's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = Path(out_dir)
        tok = text.build_tokenizer(set(words))
        clip = text.new_clip(tok, 64)
        c = int(latent_channels)
        t2i = UNet2DConditionModel.from_config({**dict(unet), "in_channels": c, "out_channels": c})
        inpaint = UNet2DConditionModel.from_config({**dict(unet), "in_channels": inpaint_layout(c).in_channels,
                                                    "out_channels": c})
        _save_all(out, AutoencoderKL(**vae.vae_config(resolution, c)), tok, clip, t2i, inpaint, ObjectLocator())
        ToyworldProbe().save(out / "probe", {"random": True})
    (out / "foundations.json").write_text(json.dumps({"version": FOUNDATIONS_VERSION, "random": True}))
    return out

