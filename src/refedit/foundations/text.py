"""The toy CLIP: a BPE tokenizer in which every toyworld word is one token, and text + vision towers trained
contrastively on object crops and their captions. Saved split as SD pipelines expect (text_encoder/,
image_encoder/), and whole (clip/) for CLIP features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from refedit.backbone.encoders import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from refedit.foundations.config import FoundationsConfig
from refedit.foundations.data import Crops

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'-!?"


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


def new_clip(tok: CLIPTokenizer, image_size: int) -> CLIPModel:
    return CLIPModel(clip_config(len(tok), image_size, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id))


def _pixels(crops: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (((crops + 1) / 2) - mean) / std


def _ids(tok: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _features(x) -> torch.Tensor:  # transformers 5 may wrap projected features in a model output
    return x if isinstance(x, torch.Tensor) else x.pooler_output


@torch.no_grad()
def caption_retrieval(model: CLIPModel, tok: CLIPTokenizer, crops: Crops, device: torch.device) -> float:
    """Held-out accuracy of picking each crop's caption among every caption toyworld can give an object."""
    from refedit.data.toyworld import COLOUR_NAMES, PATTERNS, SHAPES, object_caption
    from refedit.data.toyworld.render import ObjectSpec

    def spec(s: int, c: int, p: int) -> ObjectSpec:
        return ObjectSpec(s, c, p, 0.1, (0, 0), (0, 0), (0, 0), (0.1, 0.1), 1.0, (0, 0))

    combos = [(s, c, p) for s in range(len(SHAPES)) for c in range(len(COLOUR_NAMES)) for p in range(len(PATTERNS))]
    texts = [object_caption(spec(*k)) for k in combos]
    t = F.normalize(_features(model.get_text_features(input_ids=_ids(tok, texts).to(device))), dim=-1)
    v = torch.cat([_features(model.get_image_features(pixel_values=c.to(device)))
                   for c in _pixels(crops.images).split(256)])
    pred = (F.normalize(v, dim=-1) @ t.T).argmax(1).cpu()
    index = {k: i for i, k in enumerate(combos)}
    truth = torch.tensor([index[tuple(int(v) for v in y)] for y in crops.labels])
    return float((pred == truth).float().mean())


def train_clip(crops: Crops, heldout: Crops, tok: CLIPTokenizer, cfg: FoundationsConfig,
               device: torch.device) -> tuple[CLIPModel, dict]:
    """Symmetric InfoNCE; pairs that share a caption are each other's positives (soft targets), not false
    negatives."""
    torch.manual_seed(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model = new_clip(tok, cfg.clip_image_size).to(device)
    pixels = _pixels(crops.images)
    ids = _ids(tok, crops.captions)
    caption_ids = {c: i for i, c in enumerate(sorted(set(crops.captions)))}
    labels = torch.tensor([caption_ids[c] for c in crops.captions])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.clip_lr, total_steps=max(cfg.clip_steps, 2),
                                                pct_start=0.1)
    bar = tqdm(range(cfg.clip_steps), desc="stage 1: CLIP", leave=False)
    for _ in bar:
        idx = torch.randperm(len(crops.images), generator=g)[: cfg.clip_batch]
        out = model(input_ids=ids[idx].to(device), pixel_values=pixels[idx].to(device))
        same = (labels[idx][:, None] == labels[idx][None, :]).float().to(device)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model.cpu(), {"heldout_caption_retrieval": round(caption_retrieval(model.cpu(), tok, heldout,
                                                                              torch.device("cpu")), 4)}
