"""Magic Fixup (Alzayer et al., 2024): a coarse edit made realistic (arXiv 2403.13044).

Two U-Nets whose input is two latents and a mask (`synthesizer_layout`, `extractor_layout`: 4 + 4 + 1 with SD's VAE;
conv_in widened, new channels zero-initialised), trained jointly:

* synthesizer: ``cat([noisy latent, VAE(coarse with holes filled), M])``;
* detail extractor: ``cat([VAE(reference) noised to the synthesizer's t with fresh noise, VAE(reference), M])``.

M = 1 on valid coarse pixels (the batch's ``valid``, area-resized to the latent grid; the paper's convention,
kept inside this module). The reference is the unedited image: ``batch["reference"]`` when present, else
``batch["source"]``.

Detail transfer: every selected transformer block of the extractor writes its pre-self-attention normalised
hidden state into a `FeatureBank` (``refedit.backbone.attention.install_capture``); the matching synthesizer
block attends to it through a new cross-attention, `DetailCrossAttnProcessor`, which sits in the block's text
cross-attention slot (``attn2``), holds its own projections (deep copies of the block's self-attention ``attn1``
projections) and ignores ``encoder_hidden_states``. As in the authors' code, its query is the block's ``norm2``
output. There is no text and no CLIP anywhere:

* the synthesizer's ``attn2`` keeps only its shell (heads, scale) for the processor; its text projections
  (to_q/to_k/to_v/to_out) are deleted;
* the extractor's blocks, and synthesizer blocks outside ``detail_blocks``, have their cross-attention *skipped*
  (``attn2 = norm2 = None``, diffusers' own "no cross-attention" block layout);
* diffusers still requires ``encoder_hidden_states``: a zero tensor (B, 1, cross_attention_dim) is passed and
  read by nothing.

The extractor's output and the layers after its last captured block do not reach the loss; they are found by
one forward/backward of a width-scaled twin pair at build time and left out of `trainable_parameters()` (so DDP
needs no ``find_unused_parameters``).

Schedule: scaled-linear with zero-terminal-SNR rescaling (the authors' code default, ``zero_terminal_snr``),
epsilon loss (``prediction_type``; the toyworld default uses v-prediction, see conf/method/magic_fixup.yaml).
DDIM keeps the ``leading`` spacing (first step t=981 of 50, the authors' uniform discretisation): with epsilon
prediction the trailing spacing would start at t=999 where alpha_bar = 0 and the x0 estimate divides by zero.

Holes: filled by OpenCV Navier-Stokes inpainting after a dilation of the hole mask, with the authors' 512-px values
(7x7 dilation; radius 3 at inference, 5 in their training data loader) scaled to the image size
(`refedit.data.holes.HoleFill`). Training batches get ``coarse_filled`` from the data workers (`data_transform`,
training radius); batches without it (benchmarks, `refedit.edit`, ad-hoc calls) are filled here, with the
inference radius when sampling.

The detail extractor's noisy reference is re-noised with fresh noise at every denoiser call, i.e. every sampling
step, as the release's ``q_sample`` draws it (from the sampling generator here, so a seed fixes it).

Inference: DDIM 50 steps, eta 1, no CFG; the first latent is the coarse latent noised to the first sampled step
(`prepare_start`). ``sampling.start_strength`` < 1 starts later in the schedule (img2img-style truncation), so the
start keeps more of the coarse edit.

Interactive edits: `coarse_from_moves` builds the collage and its ``valid`` mask from object moves;
`MagicFixup.edit_moves` runs the fix-up on them.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from refedit.backbone.attention import (
    BLOCK_GROUPS,
    FeatureBank,
    block_names,
    install_capture,
    install_processors,
    multihead_attention,
)
from refedit.backbone.latents import InputLayout
from refedit.backbone.loading import load_component
from refedit.backbone.schedule import NoiseSchedule
from refedit.backbone.unet import build_unet, parameters_reached, probe_latent, transformer_blocks
from refedit.data.holes import FillCoarseHoles, HoleFill
from refedit.methods.base import Cond, LatentEditModule

log = logging.getLogger(__name__)

TEXT_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


def synthesizer_layout(latent_channels: int) -> InputLayout:
    """noisy latent, coarse-edit latent, valid mask (SD: 4 + 4 + 1)."""
    c = int(latent_channels)
    return InputLayout((("latent", c), ("coarse", c), ("valid", 1)), "synthesizer")


def extractor_layout(latent_channels: int) -> InputLayout:
    """reference latent noised to the synthesizer's t, clean reference latent, valid mask (SD: 4 + 4 + 1)."""
    c = int(latent_channels)
    return InputLayout((("latent", c), ("reference", c), ("valid", 1)), "detail extractor")


# ---------------------------------------------------------------------------------------- detail transfer
class DetailCrossAttnProcessor(torch.nn.Module):
    """Cross-attention from a synthesizer block to the extractor's feature of the same block.

    Installed on the block's ``attn2``; `encoder_hidden_states` (the dummy text context) is ignored. Holds its own
    projections, initialised as deep copies of the block's self-attention ones, so at initialisation it computes
    the block's self-attention with keys/values taken from the extractor. A trainable `nn.Module`: diffusers
    registers it under ``attn2.processor`` and it is saved with the U-Net's state dict.
    """

    def __init__(self, self_attn: Attention, bank: FeatureBank, key: str):
        super().__init__()
        self.to_q = copy.deepcopy(self_attn.to_q)
        self.to_k = copy.deepcopy(self_attn.to_k)
        self.to_v = copy.deepcopy(self_attn.to_v)
        self.to_out = copy.deepcopy(self_attn.to_out)
        self.heads = int(self_attn.heads)
        self.key = key
        self.bank = bank  # plain object, not a module: nothing of it is a parameter

    def forward(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        feature = self.bank.read(self.key)
        if feature is None:
            raise RuntimeError(f"magic_fixup: no detail-extractor feature for block '{self.key}': the extractor must "
                               f"run before the synthesizer (use MagicFixup.denoise)")
        if attn.heads != self.heads:
            raise RuntimeError(f"magic_fixup: block '{self.key}' attn2 has {attn.heads} heads, its self-attention "
                               f"{self.heads}")
        return multihead_attention(attn, hidden_states, feature.to(hidden_states.dtype),
                                   to_q=self.to_q, to_k=self.to_k, to_v=self.to_v, to_out=self.to_out)


def skip_cross_attention(block: torch.nn.Module) -> None:
    """Remove a BasicTransformerBlock's text cross-attention: diffusers skips step 3 when ``attn2`` is None."""
    block.attn2 = None
    block.norm2 = None


def strip_text_projections(attn: Attention) -> None:
    """Delete the text projections of an ``attn2`` whose processor brings its own (they would be dead weights)."""
    for name in TEXT_PROJECTIONS:
        if hasattr(attn, name):
            delattr(attn, name)
    left = [n for n, _ in attn.named_parameters() if not n.startswith("processor.")]
    if left:
        raise RuntimeError(f"magic_fixup: attn2 still holds text parameters {left}")


def assemble_detail_transfer(synthesizer: UNet2DConditionModel, extractor: UNet2DConditionModel, bank: FeatureBank,
                             groups: Iterable[str] = BLOCK_GROUPS) -> list[str]:
    """Wire the extractor's captured features into the synthesizer's new cross-attentions; returns the block names.

    Both U-Nets must have the same transformer-block layout (they are built from the same backbone config).
    """
    names = block_names(extractor, groups)
    if not names:
        raise ValueError(f"magic_fixup: detail_blocks={list(groups)} selects no transformer block of this U-Net")
    syn_blocks = [n for n, _ in transformer_blocks(synthesizer)]
    ext_blocks = [n for n, _ in transformer_blocks(extractor)]
    if syn_blocks != ext_blocks:
        raise ValueError("magic_fixup: synthesizer and detail extractor have different transformer blocks")
    install_capture(extractor, bank, names)
    install_processors(synthesizer, names, lambda name, attn, cur: DetailCrossAttnProcessor(
        synthesizer.get_submodule(f"{name}.attn1"), bank, name), which="attn2")
    selected = set(names)
    for name, block in transformer_blocks(synthesizer):
        if name in selected:
            strip_text_projections(block.attn2)
        else:
            skip_cross_attention(block)
    for _, block in transformer_blocks(extractor):
        skip_cross_attention(block)
    return names


def run_pair(synthesizer: UNet2DConditionModel, extractor: UNet2DConditionModel, bank: FeatureBank,
             synth_in: torch.Tensor, extract_in: torch.Tensor, t: torch.Tensor, n_features: int) -> torch.Tensor:
    """Extractor first (fills the bank), then the synthesizer (reads it). The bank is cleared before, not after,
    the pass: gradient checkpointing re-reads it during backward."""
    bank.clear()
    ctx = null_context(synth_in.shape[0], synthesizer, synth_in)
    extractor(extract_in, t, encoder_hidden_states=ctx, return_dict=False)
    if len(bank) != n_features:
        raise RuntimeError(f"magic_fixup: the detail extractor wrote {len(bank)} features, expected {n_features}")
    return synthesizer(synth_in, t, encoder_hidden_states=ctx, return_dict=False)[0]


def null_context(n: int, unet: UNet2DConditionModel, like: torch.Tensor) -> torch.Tensor:
    """The (n, 1, cross_attention_dim) zeros passed as `encoder_hidden_states`: diffusers requires the argument;
    no processor of either U-Net reads it."""
    return torch.zeros(n, 1, int(unet.config.cross_attention_dim), device=like.device, dtype=like.dtype)


def _narrow_unet_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """A U-Net config with every width scaled by one factor (so equal/unequal channel counts, hence conv shortcuts
    and parameter names, are preserved) down to one channel per attention head. None if it cannot be narrowed."""
    c = dict(config)
    widths = [int(w) for w in c["block_out_channels"]]
    heads = c.get("num_attention_heads") or c.get("attention_head_dim")
    head_list = [int(h) for h in (heads if isinstance(heads, (list, tuple)) else [heads])]
    if any(k in c and c[k] is not None for k in ("encoder_hid_dim", "projection_class_embeddings_input_dim",
                                                 "time_embedding_dim", "class_embed_type", "addition_embed_type")):
        return None
    g = math.gcd(*widths)
    m = math.lcm(*head_list)
    c["block_out_channels"] = [w // g * m for w in widths]
    c["norm_num_groups"] = 1
    c["cross_attention_dim"] = 4
    return c


def _trace_pair(configs: Sequence[Mapping[str, Any]], groups: Sequence[str],
                meta: bool) -> tuple[frozenset[str], set[str]]:
    """(names reached by the loss's gradient, all parameter names) of a freshly assembled synthesizer/extractor."""
    with torch.random.fork_rng(devices=[]):  # the twins' random init must not shift the caller's random stream
        syn, ext = (load_component(UNet2DConditionModel, {"config": dict(c)}, name="unet", meta=meta)
                    for c in configs)
    bank = FeatureBank()
    names = assemble_detail_transfer(syn, ext, bank, groups)
    dev = "meta" if meta else "cpu"
    x = probe_latent(syn.config, dev)
    out = run_pair(syn, ext, bank, x, x, torch.zeros(1, device=dev, dtype=torch.long), len(names))
    named = [(f"synthesizer.{n}", p) for n, p in syn.named_parameters()]
    named += [(f"extractor.{n}", p) for n, p in ext.named_parameters()]
    return parameters_reached(out, named), {n for n, _ in named}


# ---------------------------------------------------------------------------------------- coarse edits
def valid_from_black(coarse: torch.Tensor) -> torch.Tensor:
    """Holes of a ready collage given without a mask: pure-black pixels (all channels 0 in 8-bit) -> valid 0."""
    black = (coarse <= -1 + 0.5 / 127.5).all(dim=1, keepdim=True)
    return (~black).float()


@dataclass
class ObjectMove:
    """One object of the source moved by a similarity transform.

    mask: (H, W) bool / {0,1} array or tensor of the object in the source. dx, dy: translation in pixels (right,
    down). scale: about `center`. angle: degrees, counter-clockwise (OpenCV's convention). center: (x, y) pixel
    coordinates; default the mask's centroid.
    """

    mask: Any
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    angle: float = 0.0
    center: tuple[float, float] | None = None

    def matrix(self, mask: np.ndarray) -> np.ndarray:
        if self.center is None:
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                raise ValueError("ObjectMove.mask is empty")
            center = (float(xs.mean()), float(ys.mean()))
        else:
            center = (float(self.center[0]), float(self.center[1]))
        m = cv2.getRotationMatrix2D(center, float(self.angle), float(self.scale))
        m[:, 2] += (float(self.dx), float(self.dy))
        return m


def _to_hwc_float(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"coarse_from_moves: image tensor must be (3,H,W) in [-1,1], got {tuple(image.shape)}")
        return ((image.detach().float().cpu().permute(1, 2, 0).numpy() + 1) / 2).astype(np.float32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"coarse_from_moves: image array must be (H,W,3), got {arr.shape}")
    return (arr.astype(np.float32) / 255.0) if arr.dtype == np.uint8 else arr.astype(np.float32)


def coarse_from_moves(image: Any, moves: Sequence[ObjectMove]) -> tuple[torch.Tensor, torch.Tensor]:
    """Build a coarse edit (collage) and its valid mask from object moves.

    Every moved object is cut out of the source (its original region becomes a hole unless something lands on it),
    warped with ``cv2.warpAffine`` and pasted over the source, later moves on top. `image`: (3,H,W) tensor in
    [-1,1] or (H,W,3) uint8 array. Returns ``coarse`` (3,H,W) in [-1,1] with holes black and ``valid`` (1,H,W)
    {0,1} (1 = valid coarse pixel), ready for a batch.

    Example (a 64-px image, moving the object in `obj_mask` 10 px right, scaled 1.2x and turned 15 degrees)::

        from refedit.methods import load_method
        from refedit.methods.magic_fixup import ObjectMove, coarse_from_moves

        coarse, valid = coarse_from_moves(source, [ObjectMove(obj_mask, dx=10, scale=1.2, angle=15)])
        model = load_method("last.ckpt")
        result = model.edit_moves(source, [ObjectMove(obj_mask, dx=10, scale=1.2, angle=15)])  # (3,H,W)
        # or from files: save coarse/valid as PNGs and run
        # python -m refedit.edit ckpt=last.ckpt source=src.png coarse=coarse.png valid=valid.png out=out.png
    """
    img = _to_hwc_float(image)
    h, w = img.shape[:2]
    masks = []
    for mv in moves:
        m = mv.mask.detach().cpu().numpy() if isinstance(mv.mask, torch.Tensor) else np.asarray(mv.mask)
        m = np.squeeze(m)
        if m.shape != (h, w):
            raise ValueError(f"coarse_from_moves: move mask has shape {m.shape}, image is {(h, w)}")
        masks.append(m > 0.5)
    coarse = img.copy()
    valid = np.ones((h, w), bool)
    for m in masks:  # vacated regions are holes
        valid &= ~m
    coarse[~valid] = 0.0
    for mv, m in zip(moves, masks):
        mat = mv.matrix(m)
        layer = cv2.warpAffine(img, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        moved = cv2.warpAffine(m.astype(np.float32), mat, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT) > 0.5
        coarse[moved] = layer[moved]
        valid |= moved
    coarse_t = torch.from_numpy(np.ascontiguousarray(coarse)).permute(2, 0, 1).float() * 2 - 1
    return coarse_t.clamp(-1, 1), torch.from_numpy(valid.astype(np.float32))[None]


# ---------------------------------------------------------------------------------------- the method
class MagicFixup(LatentEditModule):
    name = "magic_fixup"
    train_keys = ("target", "source", "coarse", "valid")
    sample_keys = ("source", "coarse")  # `valid` defaults to all-valid (or black holes, see prepare_edit_batch)
    data_hint = "Use a data config that yields coarse edits, e.g. data=toyworld data.task=coarse_edit."
    frozen_modules = ("codec",)

    def build(self, detail_blocks: Sequence[str] = BLOCK_GROUPS, zero_terminal_snr: bool = True,
              sampling_timestep_spacing: str = "leading", inpaint_radius: float = 3.0, hole_dilation: int = 7,
              train_inpaint_radius: float = 5.0, hole_reference_px: int | None = 512,
              holes_from_black: bool = True, prediction_type: str | None = None,
              unet_init: str = "text_to_image") -> None:
        self.detail_groups = tuple(detail_blocks)
        ref_px = None if hole_reference_px is None else int(hole_reference_px)
        self.hole_fill = HoleFill(int(hole_dilation), float(inpaint_radius), ref_px)  # inference
        self.train_hole_fill = HoleFill(int(hole_dilation), float(train_inpaint_radius), ref_px)
        self._warned_fill_in_step = False
        self.holes_from_black = bool(holes_from_black)
        self.sampling_cfg.setdefault("start_strength", 1.0)
        sched = {**self.backbone_cfg["scheduler"], "rescale_betas_zero_snr": bool(zero_terminal_snr)}
        if prediction_type is not None:  # None: the backbone's (epsilon for SD-1.x, the authors' choice)
            if prediction_type not in ("epsilon", "v_prediction"):
                raise ValueError(f"method.prediction_type={prediction_type!r}: use epsilon or v_prediction")
            sched["prediction_type"] = prediction_type
        self.schedule = NoiseSchedule(sched)
        if zero_terminal_snr:
            if sampling_timestep_spacing == "trailing" and self.schedule.prediction_type == "epsilon":
                raise ValueError("method.sampling_timestep_spacing=trailing with zero_terminal_snr and epsilon "
                                 "prediction starts at alpha_bar=0, where the x0 estimate divides by zero; "
                                 "use 'leading' (the authors' uniform DDIM steps)")
            self.schedule.config["timestep_spacing"] = sampling_timestep_spacing  # DDIM only; training ignores it
        unet_spec = self.backbone_cfg["unet"]
        # both U-Nets start from the text-to-image prior (the paper's two SD-1.4 copies), conv_in widened
        c = self.codec.latent_channels
        self.synthesizer = build_unet(unet_spec, layout=synthesizer_layout(c), meta=self.meta, init=unet_init)
        self.extractor = build_unet(unet_spec, layout=extractor_layout(c), meta=self.meta, init=unet_init)
        self.bank = FeatureBank()
        self.detail_block_names = assemble_detail_transfer(self.synthesizer, self.extractor, self.bank,
                                                           self.detail_groups)
        if self.backbone_cfg.get("gradient_checkpointing"):
            self.synthesizer.enable_gradient_checkpointing()
            self.extractor.enable_gradient_checkpointing()
        self.live_parameter_names = self._trace_live_parameters()
        n_dead = sum(p.numel() for n, p in self.named_parameters()
                     if n.startswith(("synthesizer.", "extractor.")) and n not in self.live_parameter_names)
        log.info("magic_fixup: %d detail blocks; %.3fM extractor parameters cannot reach the loss and stay frozen",
                 len(self.detail_block_names), n_dead / 1e6)

    # ------------------------------------------------------------------ parameters
    def _trace_live_parameters(self) -> frozenset[str]:
        """Names of the U-Net parameters the loss reaches, from one forward/backward of a twin pair built from the
        same config: exact for any `detail_blocks` choice. The twin is a width-scaled copy on the CPU (same module
        tree and parameter names, a fraction of a second even for SD); a full-width meta twin if names differ."""
        own = {f"synthesizer.{n}" for n, _ in self.synthesizer.named_parameters()}
        own |= {f"extractor.{n}" for n, _ in self.extractor.named_parameters()}
        configs = [dict(u.config) for u in (self.synthesizer, self.extractor)]
        narrow = [_narrow_unet_config(c) for c in configs]
        if all(c is not None for c in narrow):
            live, names = _trace_pair([c for c in narrow if c is not None], self.detail_groups, meta=False)
            if names == own:
                return live
        live, names = _trace_pair(configs, self.detail_groups, meta=True)
        if names != own:
            raise RuntimeError("magic_fixup: the twin U-Nets used to find trainable parameters differ from the model")
        return live

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Both U-Nets (with the detail cross-attentions inside the synthesizer), minus what cannot reach the
        loss: the extractor's output layers and everything after its last captured block."""
        out = [p for n, p in self.synthesizer.named_parameters() if f"synthesizer.{n}" in self.live_parameter_names]
        out += [p for n, p in self.extractor.named_parameters() if f"extractor.{n}" in self.live_parameter_names]
        return out

    def detail_processors(self) -> dict[str, DetailCrossAttnProcessor]:
        return {n: self.synthesizer.get_submodule(f"{n}.attn2").processor for n in self.detail_block_names}

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def reference_image(batch: Mapping[str, Any]) -> torch.Tensor:
        """Magic Fixup's reference is the unedited image."""
        return batch["reference"] if "reference" in batch else batch["source"]

    def _valid(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["valid"] if "valid" in batch else torch.ones_like(batch["coarse"][:, :1])

    def data_transform(self) -> FillCoarseHoles:
        """The data workers add ``coarse_filled`` with the authors' training radius (their data loader's)."""
        return FillCoarseHoles(self.train_hole_fill)

    def filled_coarse(self, batch: Mapping[str, Any], train: bool = False) -> torch.Tensor:
        """The coarse edit with its holes filled: the data workers' ``coarse_filled`` when the batch has it, else
        filled here (inference radius; the training radius for a training batch built without the data
        transform, which costs a device -> CPU round trip per step and is logged once)."""
        if "coarse_filled" in batch:
            return batch["coarse_filled"]
        if train and not self._warned_fill_in_step:
            self._warned_fill_in_step = True
            log.warning("magic_fixup: training batch without 'coarse_filled': filling its holes in the training "
                        "step; build the DataModule with refedit.data.datamodule.build_datamodule(cfg.data, "
                        "method) so the data workers do it")
        fill = self.train_hole_fill if train else self.hole_fill
        return fill(batch["coarse"], self._valid(batch))

    def coarse_latents(self, batch: Mapping[str, Any], train: bool = False) -> torch.Tensor:
        """VAE(coarse edit with its holes inpainted); posterior mode, so conditions are deterministic."""
        return self.codec.encode(self.filled_coarse(batch, train), sample=False)

    def conditions(self, batch, *, train, generator=None) -> tuple[Cond, Cond | None]:
        zc = self.coarse_latents(batch, train)
        m = F.interpolate(self._valid(batch).float(), size=zc.shape[-2:], mode="area")
        concat = torch.cat([zc, m], dim=1)
        ref = self.codec.encode(self.reference_image(batch), sample=False)
        # the extractor's noise is drawn by `denoise` at every call, from this generator (None: the global one)
        if train:
            drop = self.drop_mask(concat.shape[0])[:, None, None, None]
            concat = torch.where(drop, torch.zeros_like(concat), concat)
            return {"concat": concat, "ref": ref, "noise_generator": generator}, None
        cond = {"concat": concat, "ref": ref, "noise_generator": generator}
        return cond, {"concat": torch.zeros_like(concat), "ref": ref, "noise_generator": generator}

    def denoise(self, z, t, cond):
        n = z.shape[0]
        t_vec = t.reshape(-1).expand(n) if t.numel() == 1 else t
        ref = cond["ref"]
        # fresh noise for the extractor at every call (every sampling step), independent of the synthesizer's
        ref_noise = torch.randn(ref.shape, generator=cond.get("noise_generator"), device=ref.device, dtype=ref.dtype)
        ref_t = self.schedule.add_noise(ref, ref_noise, t_vec.to(ref.device))
        mask = cond["concat"][:, -1:]
        synth_in = torch.cat([z, cond["concat"]], dim=1)
        extract_in = torch.cat([ref_t, ref, mask], dim=1).to(z.dtype)
        return run_pair(self.synthesizer, self.extractor, self.bank, synth_in, extract_in, t,
                        len(self.detail_block_names))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, batch, *, strength: float | None = None, **kwargs: Any) -> torch.Tensor:
        """`strength` defaults to ``sampling.start_strength`` (1 = the full schedule, started from the coarse
        latent noised to its first step)."""
        if strength is None:
            strength = float(self.sampling_cfg["start_strength"])
        return super().sample(batch, strength=strength, **kwargs)

    def init_latents(self, batch, generator):
        return self.coarse_latents(batch)

    def prepare_start(self, z, batch, scheduler, timesteps, generator):
        """The full schedule starts from plain noise in the base: replace it by the coarse latent noised (with that
        same noise) to the first step. A truncated schedule (start_strength < 1) already starts from it."""
        if len(timesteps) != len(scheduler.timesteps):
            return z
        noise = z / scheduler.init_noise_sigma
        return scheduler.add_noise(self.coarse_latents(batch), noise, timesteps[:1])

    def condition_image(self, batch):
        return batch.get("coarse")

    def prepare_edit_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`python -m refedit.edit` gives an all-ones `valid` when no valid= file is passed; then pure-black
        pixels of the collage are taken as its holes (``holes_from_black``)."""
        if self.holes_from_black and "coarse" in batch:
            v = batch.get("valid")
            if v is None or bool((v > 0.5).all()):
                batch = dict(batch, valid=valid_from_black(batch["coarse"]))
        return batch

    @torch.no_grad()
    def edit_moves(self, image: Any, moves: Sequence[ObjectMove], **sample_kwargs: Any) -> torch.Tensor:
        """Move objects of `image` ((3,H,W) in [-1,1] or (H,W,3) uint8, H and W divisible by the VAE factor) and
        fix the collage up; returns the result (3,H,W) in [-1,1]."""
        coarse, valid = coarse_from_moves(image, moves)
        source = coarse.new_tensor(_to_hwc_float(image)).permute(2, 0, 1) * 2 - 1
        batch = {"source": source[None].to(self.device), "coarse": coarse[None].to(self.device),
                 "valid": valid[None].to(self.device)}
        return self.sample(batch, **sample_kwargs)[0]
