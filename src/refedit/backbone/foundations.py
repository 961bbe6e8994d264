"""Stage 1 of the embedded default: a tiny VAE and a tiny CLIP (text + image towers, local tokenizer) trained on
toyworld and saved with `save_pretrained` in diffusers / transformers layout, so `backbone=tiny` loads them
through the same `from_pretrained` path as SD-1.5.

Layout of the cache dir (a diffusers-style model root):
    vae/  text_encoder/  tokenizer/  image_encoder/  feature_extractor/  clip/  foundations.json
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from refedit.backbone.encoders import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_image_processor
from refedit.utils.cache import build_once
from refedit.utils.config import stored_matches

log = logging.getLogger(__name__)

FOUNDATIONS_VERSION = "toyworld-foundations-v2"
PARTS = ("vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "clip")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'-!?"


@dataclass
class FoundationsConfig:
    resolution: int = 64
    vae_steps: int = 2000      # held-out PSNR jumps after ~1000 steps (21.9 dB at 700-1000, 26.2 dB at 2000)
    vae_batch: int = 16
    vae_crop: int = 32          # trained on random crops (a conv VAE is size-agnostic): 4x cheaper than 64 px
    vae_lr: float = 2e-3
    clip_steps: int = 400
    clip_batch: int = 64
    clip_lr: float = 2e-3
    clip_image_size: int = 64
    num_images: int = 1536
    seed: int = 0


def vae_config(resolution: int) -> dict:
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 64, 64], layers_per_block=1,
                latent_channels=4, norm_num_groups=16, sample_size=resolution,
                mid_block_add_attention=False)  # no attention: a conv VAE is size-agnostic and 5% faster


def clip_config(vocab_size: int, image_size: int, bos: int, eos: int, pad: int) -> CLIPConfig:
    text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=pad, projection_dim=64)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8, projection_dim=64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def build_tokenizer(words: set[str]) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges turn every toyworld word into one token; other words fall back to
    characters, so any caption still tokenises."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for tok in specials + list(_CHARS) + [c + "</w>" for c in _CHARS]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for w in sorted(words):
        if len(w) < 2 or not set(w) <= set(_CHARS):
            continue
        left = w[0]
        for i in range(1, len(w)):
            right = w[i] + ("</w>" if i == len(w) - 1 else "")
            merge = (left, right)
            if merge not in merges:
                merges.append(merge)
            left = left + right
            vocab.setdefault(left, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _toyworld_data(cfg: FoundationsConfig):
    """Frames for the VAE and (object crop, caption) pairs for CLIP, rendered once into memory."""
    from refedit.data.toyworld import build_sample

    frames, crops, captions = [], [], []
    for i in tqdm(range(cfg.num_images), desc="foundations: rendering toyworld", leave=False):
        s = build_sample("exemplar_inpaint_self", seed=10_000_000 + cfg.seed * 100_000 + i, size=cfg.resolution,
                         reference_size=cfg.clip_image_size)
        frames.append(s["target"])
        crops.append(s["reference"])
        captions.append(s["caption"])
    return torch.stack(frames), torch.stack(crops), captions


def _train_vae(frames: torch.Tensor, cfg: FoundationsConfig) -> tuple[AutoencoderKL, float]:
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**vae_config(cfg.resolution))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.vae_lr, total_steps=cfg.vae_steps, pct_start=0.1)
    n_train = int(len(frames) * 0.9)
    bar = tqdm(range(cfg.vae_steps), desc="foundations: VAE", leave=False)
    for _ in bar:
        idx = torch.randint(0, n_train, (cfg.vae_batch,), generator=g)
        x = frames[idx]
        if cfg.vae_crop and cfg.vae_crop < x.shape[-1]:
            oy, ox = (int(v) for v in torch.randint(0, x.shape[-1] - cfg.vae_crop + 1, (2,), generator=g))
            x = x[..., oy:oy + cfg.vae_crop, ox:ox + cfg.vae_crop]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(g)).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + 0.5 * F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        held = frames[n_train:]
        z = vae.encode(held).latent_dist.mode()
        rec = vae.decode(z).sample.clamp(-1, 1)
        mse = F.mse_loss((rec + 1) / 2, (held + 1) / 2).item()
        psnr = 10 * math.log10(1.0 / max(mse, 1e-10))
        z_all = torch.cat([vae.encode(c).latent_dist.mode() for c in frames[:256].split(64)])
        vae.register_to_config(scaling_factor=float(1.0 / z_all.std()))
    return vae, psnr


def _train_clip(crops: torch.Tensor, captions: list[str], tok: CLIPTokenizer,
                cfg: FoundationsConfig) -> tuple[CLIPModel, float]:
    torch.manual_seed(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model = CLIPModel(clip_config(len(tok), cfg.clip_image_size, tok.bos_token_id, tok.eos_token_id,
                                  tok.pad_token_id))
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    pixels = (((crops + 1) / 2) - mean) / std
    ids = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    # contrastive batches must not contain two pairs with the same caption: they would be false negatives
    caption_ids = {c: i for i, c in enumerate(sorted(set(captions)))}
    labels = torch.tensor([caption_ids[c] for c in captions])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.clip_lr, total_steps=cfg.clip_steps, pct_start=0.1)
    n_train = int(len(crops) * 0.9)
    bar = tqdm(range(cfg.clip_steps), desc="foundations: CLIP", leave=False)
    for _ in bar:
        idx = torch.randperm(n_train, generator=g)[: cfg.clip_batch]
        out = model(input_ids=ids[idx], pixel_values=pixels[idx])
        same = labels[idx][:, None] == labels[idx][None, :]
        target = same.float() / same.float().sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():  # held-out caption retrieval accuracy among the distinct captions
        uniq = sorted(set(captions))
        t_ids = tok(uniq, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        t = F.normalize(_tensor(model.get_text_features(input_ids=t_ids)), dim=-1)
        v = F.normalize(_tensor(model.get_image_features(pixel_values=pixels[n_train:])), dim=-1)
        pred = (v @ t.T).argmax(1)
        acc = (pred == labels[n_train:]).float().mean().item()
    return model, acc


def _tensor(x) -> torch.Tensor:  # transformers 5 may wrap projected features in a model output
    return x if isinstance(x, torch.Tensor) else x.pooler_output


def _save_parts(out: Path, vae: AutoencoderKL, tok: CLIPTokenizer, clip: CLIPModel) -> None:
    """Save in SD layout: the CLIP towers split into text_encoder/ and image_encoder/ as SD pipelines expect."""
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out / "vae")
    tok.save_pretrained(out / "tokenizer")
    clip.save_pretrained(out / "clip")
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    text.save_pretrained(out / "text_encoder")
    vision = CLIPVisionModelWithProjection(clip.config.vision_config)
    vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    vision.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    vision.save_pretrained(out / "image_encoder")
    size = clip.config.vision_config.image_size
    clip_image_processor(None, size).save_pretrained(out / "feature_extractor")


def build_foundations(out_dir: str | os.PathLike, cfg: FoundationsConfig | None = None) -> Path:
    """Train and save the foundations to `out_dir` atomically (a temp dir renamed into place)."""
    cfg = cfg or FoundationsConfig()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    threads = torch.get_num_threads()
    frames, crops, captions = _toyworld_data(cfg)
    words = {w for c in captions for w in re.findall(r"[a-z0-9]+", c.lower())}
    from refedit.data import toyworld

    if hasattr(toyworld, "vocabulary"):  # every word a toyworld caption can contain, seen or not
        words |= set(toyworld.vocabulary())
    tok = build_tokenizer(words)
    vae, psnr = _train_vae(frames, cfg)
    clip, acc = _train_clip(crops, captions, tok, cfg)
    _save_parts(tmp, vae, tok, clip)
    info = {"version": FOUNDATIONS_VERSION, "config": asdict(cfg), "vae_heldout_psnr_db": round(psnr, 2),
            "vae_scaling_factor": float(vae.config.scaling_factor), "clip_heldout_caption_retrieval_acc": round(acc, 4),
            "vocab_size": len(tok), "seconds": round(time.time() - t0, 1), "threads": threads}
    (tmp / "foundations.json").write_text(json.dumps(info, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("foundations built in %.0f s: %s", info["seconds"], info)
    return out_dir


def foundations_ready(path: str | os.PathLike, cfg: FoundationsConfig | None = None) -> bool:
    """True when `path` holds foundations of this version (and, when `cfg` is given, of exactly that budget)."""
    p = Path(path)
    if not (p / "foundations.json").is_file():
        return False
    info = json.loads((p / "foundations.json").read_text())
    if info.get("version") != FOUNDATIONS_VERSION or not all((p / part).is_dir() for part in PARTS):
        return False
    return cfg is None or stored_matches(info.get("config"), cfg)


def ensure_foundations(path: str | os.PathLike, cfg: FoundationsConfig | None = None) -> Path:
    """Return the cached foundations dir, building it first when missing, of an older version or of another
    budget than `cfg` (default: `FoundationsConfig()`)."""
    cfg = cfg or FoundationsConfig()

    def build(p: Path) -> None:
        why = "a different version or budget is cached there" if (p / "foundations.json").is_file() else "once"
        print(f"refedit: building the toyworld foundations (tiny VAE + CLIP) into {p} ({why}; "
              f"~{_expected_minutes(cfg):.0f} min on 2 cores)", flush=True)
        build_foundations(p, cfg)

    return build_once(path, lambda p: foundations_ready(p, cfg), build)


def _expected_minutes(cfg: FoundationsConfig) -> float:
    """Rough wall time on 2 CPU cores, for the message only."""
    return max(1.0, (cfg.vae_steps * 0.14 + cfg.clip_steps * 0.08 + cfg.num_images * 0.004) / 60)


def save_random_foundations(out_dir: str | os.PathLike, resolution: int = 64, seed: int = 0,
                            words: tuple[str, ...] = ("a", "red", "blue", "green", "star", "circle", "striped",
                                                      "moving", "left", "right")) -> Path:
    """Untrained tiny parts in exactly the layout `build_foundations` writes: for tests of the loading path
    and of everything that needs the parts but not their quality."""
    torch.manual_seed(seed)
    out = Path(out_dir)
    tok = build_tokenizer(set(words))
    clip = CLIPModel(clip_config(len(tok), 64, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id))
    _save_parts(out, AutoencoderKL(**vae_config(resolution)), tok, clip)
    (out / "foundations.json").write_text(json.dumps({"version": FOUNDATIONS_VERSION, "random": True}))
    return out
