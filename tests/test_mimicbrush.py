"""MimicBrush: reference K/V injection, CFG branch dropping, gradients, depth, SIFT grid masks, pairs,
edit CLI, full-size architecture on the meta device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from conftest import tiny_backbone
from numerics import FORWARD_REL, assert_close_rel
from refedit.backbone.attention import restore_processors
from refedit.methods.mimicbrush import (
    MimicBrush,
    ReferenceBank,
    ReferenceKVProcessor,
    install_reference_kv,
)


class RampDepth:
    """A pluggable depth estimator for tests: a left-to-right ramp."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        w = images.shape[-1]
        return (
            torch.linspace(0, 1, w).view(1, 1, 1, w).expand(images.shape[0], 1, images.shape[-2], w).clone()
        )


def _batch(n=2, size=64, seed=0, width=None):
    g = torch.Generator().manual_seed(seed)
    w = width or size
    mask = torch.zeros(n, 1, size, w)
    mask[:, :, 16:48, 12:40] = 1
    src = torch.rand(n, 3, size, w, generator=g) * 2 - 1
    return {
        "source": src,
        "mask": mask,
        "target": src.clone(),
        "reference": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
        "depth": torch.rand(n, 1, size, w, generator=g),
    }


def _randomise_conv_in(model):
    """Non-zero weights in the widened conv_in channels, so mask, masked image and depth all matter."""
    with torch.no_grad():
        model.unet.conv_in.weight[:, 4:].normal_(0, 0.05)


@pytest.fixture(scope="module")
def model(random_parts):
    torch.manual_seed(0)
    m = MimicBrush(backbone=tiny_backbone(random_parts), name="mimicbrush")
    _randomise_conv_in(m)
    return m.eval()


def _cond(model, b, seed=0):
    cond, uncond = model.conditions(b, train=False, generator=torch.Generator().manual_seed(seed))
    return cond, uncond


# ------------------------------------------------------------------------------------ attention processor
def test_processor_attends_over_own_and_reference_tokens():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    h, ref = torch.randn(2, 10, 32), torch.randn(2, 7, 32)
    bank = ReferenceBank()
    proc = ReferenceKVProcessor(bank, "blk", attn.processor)
    assert torch.equal(proc(attn, h), attn.processor(attn, h))  # empty bank: stock self-attention

    def manual(hh, kv):
        q, k, v = attn.to_q(hh), attn.to_k(kv), attn.to_v(kv)

        def split(x):
            return x.view(x.shape[0], x.shape[1], 4, 8).transpose(1, 2)

        w = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(8)).softmax(-1)
        o = (w @ split(v)).transpose(1, 2).reshape(hh.shape[0], -1, 32)
        return attn.to_out[0](o)

    bank.write("blk", ref)
    # fused attention vs the manual softmax: one layer's round-off, far inside a forward's
    with torch.no_grad():
        cat = manual(h, torch.cat([h, ref], 1))
        assert_close_rel(proc(attn, h), cat, rel=FORWARD_REL, what="reference K/V attention")
        blended = ReferenceKVProcessor(bank, "blk", attn.processor, blend=0.5)(attn, h)
        assert_close_rel(blended, 0.5 * cat + 0.5 * manual(h, h), rel=FORWARD_REL, what="blend 0.5")
        # per-sample drop: sample 1 sees only its own tokens; the bank then holds rows for kept samples only
        bank.write("blk", ref[:1])
        bank.keep = torch.tensor([True, False])
        out = proc(attn, h)
        assert_close_rel(out[:1], cat[:1], rel=FORWARD_REL, what="kept sample")
        assert torch.equal(out[1:], attn.processor(attn, h[1:]))  # the stock processor on that sample alone


def test_empty_bank_is_stock_unet_and_removal_restores_it(model):
    from refedit.backbone.attention import install_processors  # noqa: F401 - the shared plumbing used

    stock = UNet2DConditionModel.from_config(model.unet.config)
    stock.load_state_dict(model.unet.state_dict())
    stock.eval()
    procs = [p for p in model.unet.attn_processors.values() if isinstance(p, ReferenceKVProcessor)]
    assert len(procs) == len(model.block_names) == 5
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 13, 16, 16, generator=g)
    ctx = torch.randn(2, 65, 64, generator=g)
    t = torch.tensor([10, 700])
    model.bank.clear()
    with torch.no_grad():
        want = stock(x, t, encoder_hidden_states=ctx).sample
        assert torch.equal(model.unet(x, t, encoder_hidden_states=ctx).sample, want)
        model.remove_reference_processors()
        try:
            assert not any(isinstance(p, ReferenceKVProcessor) for p in model.unet.attn_processors.values())
            assert torch.equal(model.unet(x, t, encoder_hidden_states=ctx).sample, want)
        finally:
            model._stock_processors = install_reference_kv(
                model.unet, model.bank, model.block_names, model.blend
            )


def test_capture_fills_bank_with_reference_blocks_at_reference_resolution(model):
    b = _batch(n=1)
    b["reference"] = torch.rand(1, 3, 32, 32) * 2 - 1  # other size than the source: other token counts
    cond, _ = _cond(model, b)
    with torch.enable_grad():  # in training the bank outlives denoise (checkpoint recomputation reads it)
        model.denoise(torch.randn(1, 4, 16, 16), torch.tensor([500]), cond)
    assert set(model.bank.features) == set(model.block_names)
    hw = {n: f.shape[1] for n, f in model.bank.features.items()}
    assert hw["mid_block.attentions.0.transformer_blocks.0"] == 4  # 8x8 reference latent / 4 in the mid block
    model.bank.clear()


# ------------------------------------------------------------------------------------ reference influence
def test_reference_changes_output_and_dropped_reference_changes_nothing(model):
    b = _batch()
    cond, uncond = _cond(model, b)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(400)
    other = torch.randn_like(cond["ref_latent"])
    with torch.no_grad():
        base = model.denoise(z, t, cond)
        changed = model.denoise(z, t, {**cond, "ref_latent": other})
        assert (base - changed).abs().mean() > 1e-4
        # dropped branch (unconditional): no reference K/V; the reference latent is never looked at
        u = model.denoise(z, t, uncond)
        assert torch.equal(u, model.denoise(z, t, {**uncond, "ref_latent": other}))
        # mixed batch: sample 1 dropped, sample 0 kept; sample 1's reference changes nothing at all
        mixed = {**cond, "keep": torch.tensor([True, False])}
        out = model.denoise(z, t, mixed)
        ref1 = cond["ref_latent"].clone()
        ref1[1] = other[1]
        assert torch.equal(out, model.denoise(z, t, {**mixed, "ref_latent": ref1}))
        ref0 = cond["ref_latent"].clone()
        ref0[0] = other[0]
        out0 = model.denoise(z, t, {**mixed, "ref_latent": ref0})
        assert (out0[0] - out[0]).abs().mean() > 1e-4 and torch.equal(out0[1], out[1])


def test_reference_image_changes_the_edit_and_not_when_dropped(model):
    b = _batch(n=1)
    b2 = dict(b, reference=torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9)) * 2 - 1)
    kw = {"num_steps": 3, "guidance_scale": 5.0, "paste_back": False}
    a = model.sample(b, generator=torch.Generator().manual_seed(1), **kw)
    c = model.sample(b2, generator=torch.Generator().manual_seed(1), **kw)
    assert (a - c).abs().mean() > 1e-4
    # training with the reference branch always dropped: context = CLIP(black) projection, no reference K/V
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([300])
    old = model.cond_drop_prob
    model.cond_drop_prob = 1.0
    try:
        outs = []
        for batch in (b, b2):
            torch.manual_seed(5)  # same VAE sample and depth-drop draws for both
            cond, _ = model.conditions(batch, train=True)
            with torch.no_grad():
                outs.append(model.denoise(z, t, cond))
        assert torch.equal(outs[0], outs[1])
    finally:
        model.cond_drop_prob = old
        model.bank.clear()


def test_cfg_batch_matches_separate_branches(model):
    """The guider concatenates [uncond, cond]: the bank's per-sample keep must route the reference right."""
    b = _batch()
    cond, uncond = _cond(model, b)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(250)
    with torch.no_grad():
        both = model.denoise(torch.cat([z, z]), t, {k: torch.cat([uncond[k], cond[k]]) for k in cond})
        u, c = both.chunk(2)
        # batched vs alone: the reference U-Net's round-off, then the imitative U-Net's: two forwards
        assert_close_rel(u, model.denoise(z, t, uncond), rel=2 * FORWARD_REL, what="uncond branch")
        assert_close_rel(c, model.denoise(z, t, cond), rel=2 * FORWARD_REL, what="cond branch")
    assert torch.equal(uncond["context"][0], model.null_context(1)[0])
    assert not uncond["keep"].any() and cond["keep"].all()


def test_release_recipe_drops_reference_kv_for_a_fixed_quarter_and_null_is_clip_of_zero_pixel_values(random_parts):
    """recipe=release (ali-vilab/MimicBrush models/ReferenceNet_attention.py, mimicbrush_referencenet.py): 0.5/0.5
    attention blend; in training the first int(0.25 B) samples lose the reference K/V whatever happens to their
    context; the null context is CLIP of all-zero pixel values (after normalisation), not of a black image."""
    torch.manual_seed(0)
    m = MimicBrush(backbone=tiny_backbone(random_parts), recipe="release")
    procs = [p for p in m.unet.attn_processors.values() if isinstance(p, ReferenceKVProcessor)]
    assert procs and all(p.blend == 0.5 for p in procs)
    null = m.null_context(1)
    for n in (4, 8, 12):
        b = _batch(n=n)
        for p_ctx in (0.0, 1.0):  # context never / always dropped: the K/V drop does not follow it
            m.cond_drop_prob = p_ctx
            with torch.no_grad():
                cond, _ = m.conditions(b, train=True)
            expected = torch.arange(n) >= n // 4
            assert torch.equal(cond["keep"], expected), (n, p_ctx)
            is_null = (cond["context"] == null).flatten(1).all(1)
            assert bool(is_null.all()) == (p_ctx == 1.0) and bool(is_null.any()) == (p_ctx == 1.0)
    with torch.no_grad():
        s = m.image_encoder.image_size
        zero_px = torch.zeros(1, 3, s, s)
        tokens = m.image_encoder.model(pixel_values=zero_px, output_hidden_states=True).hidden_states[-2]
        assert torch.equal(null, m.proj(tokens))
        black = m.proj(m.image_encoder(-torch.ones(1, 3, s, s), output="penultimate"))
        assert (null - black).abs().max() > 1e-3  # a different image from the paper recipe's black one
    restore_processors(m.unet, m._stock_processors)


def test_paper_recipe_drops_reference_kv_with_the_context(model):
    assert model.recipe == "paper" and model.blend is None
    b = _batch(n=8)
    old = model.cond_drop_prob
    try:
        for p_ctx in (0.0, 1.0):
            model.cond_drop_prob = p_ctx
            with torch.no_grad():
                cond, _ = model.conditions(b, train=True)
            assert bool(cond["keep"].all()) == (p_ctx == 0.0) and bool(cond["keep"].any()) == (p_ctx == 0.0)
        s = model.image_encoder.image_size
        with torch.no_grad():
            black = model.proj(model.image_encoder(-torch.ones(1, 3, s, s), output="penultimate"))
            assert torch.equal(model.null_context(1), black)
    finally:
        model.cond_drop_prob = old
    with pytest.raises(ValueError, match="method.recipe"):
        MimicBrush(backbone=model.backbone_cfg, recipe="released")


# ------------------------------------------------------------------------------------------- training
def test_gradients_reach_both_unets_projection_and_depth_guider_only(model):
    model.train()
    old = model.cond_drop_prob, model.depth_drop_prob
    model.cond_drop_prob, model.depth_drop_prob = 0.0, 0.0
    try:
        model.zero_grad()
        model.diffusion_loss(_batch(n=2)).backward()
        trainable = {id(p) for p in model.trainable_parameters()}
        named = dict(model.named_parameters())
        with_grad = {n for n, p in named.items() if p.grad is not None}
        assert with_grad == {n for n, p in named.items() if id(p) in trainable}
        for prefix in ("unet.", "reference_unet.", "proj.", "depth_guider."):
            norm = sum(
                float(p.grad.abs().sum()) for n, p in named.items() if n.startswith(prefix) and n in with_grad
            )
            assert norm > 0, prefix
        assert all(
            named[n].grad.abs().sum() > 0
            for n in (
                "depth_guider.net.0.weight",
                "proj.weight",
                "reference_unet.mid_block.attentions.0.proj_in.weight",
            )
        )
        frozen = [n for n in named if n.startswith(("codec.", "image_encoder."))]
        assert frozen and not any(named[n].requires_grad or named[n].grad is not None for n in frozen)
        # the reference U-Net's tail after the last read block never feeds a captured feature: frozen
        dead = {f"reference_unet.{n}" for n in model.reference_dead_parameters}
        assert "reference_unet.conv_out.weight" in dead and not dead & with_grad
        # ... which is what comes after the last read block: the rest of its attention module, its up block's
        # upsampler, later up blocks, the output head
        _, i, _, j, *_ = model.block_names[-1].split(".")
        n_up = len(model.reference_unet.up_blocks)
        tail = ("reference_unet.conv_norm_out", "reference_unet.conv_out", f"reference_unet.up_blocks.{i}.attentions.{j}.",
                f"reference_unet.up_blocks.{i}.upsamplers.",
                *(f"reference_unet.up_blocks.{k}." for k in range(int(i) + 1, n_up)))
        assert all(n.startswith(tail) for n in dead), sorted(n for n in dead if not n.startswith(tail))
        # every reference dropped: the reference U-Net stays in the graph (DDP needs a gradient for each)
        model.zero_grad()
        model.cond_drop_prob = 1.0
        model.diffusion_loss(_batch(n=2)).backward()
        assert all(p.grad is not None for p in model.trainable_parameters())
        assert all(
            float(p.grad.abs().sum()) == 0
            for n, p in model.reference_unet.named_parameters()
            if p.requires_grad
        )
    finally:
        model.cond_drop_prob, model.depth_drop_prob = old
        model.zero_grad()
        model.bank.clear()
        model.eval()


def test_imitative_unet_widened_from_pretrained_inpainting_weights(random_parts, tmp_path):
    """A 9-channel inpainting U-Net in diffusers layout loads and is widened to 13 channels with zero depth
    channels; the reference U-Net gets the architecture with 4 channels."""
    bb = tiny_backbone(random_parts)
    inpaint = UNet2DConditionModel(**{**bb["unet"]["config"], "in_channels": 9})
    inpaint.save_pretrained(tmp_path / "sd" / "unet")
    bb = tiny_backbone(random_parts, **{"backbone.unet.pretrained": str(tmp_path / "sd"),
                                        "backbone.unet.pretrained_inpaint": str(tmp_path / "sd")})
    m = MimicBrush(backbone=bb, reference_unet={"config": bb["unet"]["config"]})
    w = m.unet.conv_in.weight
    assert w.shape[1] == 13 and m.unet.config.in_channels == 13
    assert torch.equal(w[:, :9], inpaint.conv_in.weight) and torch.all(w[:, 9:] == 0)
    assert m.reference_unet.config.in_channels == 4


# ---------------------------------------------------------------------------------------------- depth
def test_shape_control_switch_and_pluggable_estimator(model, random_parts):
    b = _batch(n=1)
    b_flat = dict(b, depth=torch.zeros_like(b["depth"]))
    kw = {"num_steps": 2, "guidance_scale": 5.0, "paste_back": False}

    def run(batch, **extra):
        return model.sample(batch, generator=torch.Generator().manual_seed(0), **kw, **extra)

    off = run(b, shape_control=False)
    assert torch.equal(off, run(b_flat, shape_control=False))  # shape control off: depth is ignored
    on = run(b, shape_control=True)
    assert (on - off).abs().mean() > 1e-5
    assert torch.equal(model.depth_input(b, train=False), torch.zeros_like(b["depth"]))  # config default: off
    no_depth = {k: v for k, v in b.items() if k != "depth"}
    with pytest.raises(ValueError, match="shape_control"):
        run(no_depth, shape_control=True)
    m = MimicBrush(
        backbone=tiny_backbone(random_parts), depth_estimator={"_target_": "test_mimicbrush.RampDepth"}
    )
    d = m.depth_input(no_depth, train=True)  # training: estimator on the unmasked source, min-max normalised
    assert d.shape == (1, 1, 64, 64) and d[..., 0].max() == 0 and d[..., -1].min() == 1


def test_depth_guider_reaches_latent_size(model):
    feat = model.depth_guider(torch.rand(2, 1, 64, 64))
    assert feat.shape == (2, 4, 16, 16)  # tiny VAE: downsample 4 -> two stride-2 convs
    strides = [c.stride[0] for c in model.depth_guider.net if isinstance(c, torch.nn.Conv2d)]
    assert strides == [1, 2, 2, 1]
    assert model.depth_guider.net[0].in_channels == 1 and model.depth_guider.net[0].out_channels == 16


# ------------------------------------------------------------------------------------------ inference
def test_non_square_source_is_padded_edited_cropped_and_blended(model):
    b = _batch(n=1, size=64, width=48)
    out = model.sample(
        b, num_steps=2, guidance_scale=5.0, paste_back=True, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (1, 3, 64, 48)
    keep = b["mask"].expand_as(out) == 0
    assert torch.equal(out[keep], b["source"][keep])
    assert (out[~keep] - b["source"][~keep]).abs().mean() > 1e-3


def test_edit_cli_with_saved_checkpoint(model, tmp_path):
    from PIL import Image

    from refedit.edit import main as edit_main
    from refedit.methods import load_method

    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    assert not any(k.startswith(("codec.", "image_encoder.")) for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "mb.ckpt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    mask = np.zeros((40, 56), np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rc = edit_main(
        [
            f"ckpt={tmp_path / 'mb.ckpt'}",
            f"source={tmp_path / 'src.png'}",
            f"mask={tmp_path / 'mask.png'}",
            f"reference={tmp_path / 'ref.png'}",
            f"out={tmp_path / 'out.png'}",
            "steps=2",
            "paste_back=true",
        ]
    )
    assert rc == 0
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    src = np.asarray(Image.open(tmp_path / "src.png"))
    assert out.shape == src.shape  # padded to a square, edited, cropped back: no stretching, same size
    assert np.array_equal(out[mask == 0], src[mask == 0]) and not np.array_equal(out[mask > 0], src[mask > 0])
    reloaded = load_method(tmp_path / "mb.ckpt")
    assert torch.equal(reloaded.unet.conv_in.weight, model.unet.conv_in.weight)
    assert torch.equal(reloaded.proj.weight, model.proj.weight)


# --------------------------------------------------------------------------------------------- configs
def test_method_config_builds_with_blend_option(random_parts):
    from refedit.utils.config import build_method, compose

    cfg = compose("train", ["method=mimicbrush", f"backbone.root={random_parts}", "method.blend=0.5"])
    m = build_method(cfg.method)
    procs = [p for p in m.unet.attn_processors.values() if isinstance(p, ReferenceKVProcessor)]
    assert len(procs) == 5 and all(p.blend == 0.5 for p in procs)
    assert m.sampling_cfg["guidance_scale"] == 5.0 and m.cond_drop_prob == 0.1 and m.depth_drop_prob == 0.5
    assert m.reference_unet.config.in_channels == 4 and m.unet.config.in_channels == 13
    restore_processors(m.unet, m._stock_processors)


def test_full_size_sd15_experiment_on_meta():
    from refedit.utils.config import build_method, compose

    cfg = compose("train", ["experiment=mimicbrush_sd15"])
    m = build_method(cfg.method, meta=True)

    def count(mod):
        return sum(p.numel() for p in mod.parameters())

    n_unet, n_ref = count(m.unet), count(m.reference_unet)
    n_train = sum(p.numel() for p in m.trainable_parameters())
    print(
        f"\nmimicbrush_sd15: imitative {n_unet / 1e6:.2f}M, reference {n_ref / 1e6:.2f}M, "
        f"proj {count(m.proj)}, "
        f"depth guider {count(m.depth_guider)}, CLIP {count(m.image_encoder) / 1e6:.2f}M, "
        f"VAE {count(m.codec) / 1e6:.2f}M, trainable {n_train / 1e6:.2f}M, total {count(m) / 1e6:.2f}M"
    )
    assert m.unet.config.in_channels == 13 and m.reference_unet.config.in_channels == 4
    assert abs(n_unet - (859.52e6 + 4 * 320 * 9)) / 859.5e6 < 1e-3  # SD-1.5 + 4 zero-init depth channels
    assert abs(n_ref - 859.52e6) / 859.5e6 < 1e-3
    assert len(m.block_names) == 10  # SD-1.x: 1 mid + 9 up transformer blocks
    assert m.image_encoder.num_tokens == 257 and (m.proj.in_features, m.proj.out_features) == (1024, 768)
    assert [c.stride[0] for c in m.depth_guider.net if isinstance(c, torch.nn.Conv2d)] == [1, 2, 2, 2, 1]
    assert n_train == n_unet + n_ref - sum(
        p.numel() for n, p in m.reference_unet.named_parameters() if n in m.reference_dead_parameters
    ) + count(m.proj) + count(m.depth_guider)
    assert cfg.trainer.devices == 8 and cfg.data.batch_size * cfg.trainer.devices == 64
    assert cfg.method.optimizer.lr == 1e-5 and cfg.backbone.resolution == 512


# ----------------------------------------------------------------------------------------- SIFT grid masks
def _u8(x: torch.Tensor) -> np.ndarray:
    from refedit.data.mimicbrush_pairs import to_uint8

    return to_uint8(x)


def test_sift_grid_mask_cells_and_probabilities():
    from refedit.data.mimicbrush_pairs import sift_grid_mask
    from refedit.data.toyworld import build_sample

    s = build_sample("reference_imitation", 3, size=64)
    src, ref = _u8(s["source"]), _u8(s["reference"])
    mask, info = sift_grid_mask(src, ref, np.random.default_rng(0), p_matched=1.0, p_other=0.0, min_cells=0)
    n = info["n"]
    assert 3 <= n <= 10 and mask.shape == (64, 64) and mask.dtype == np.float32
    assert len(info["points"]) > 0 and np.array_equal(info["masked"], info["matched"])
    for x, y in info["points"]:  # every matched source keypoint lies in a masked cell
        assert mask[int(round(y)), int(round(x))] == 1
    cells = mask.reshape(n, 64 // n, n, 64 // n) if 64 % n == 0 else None
    if cells is not None:
        assert np.array_equal(cells.max(axis=(1, 3)), info["masked"].astype(np.float32))
    again, info2 = sift_grid_mask(src, ref, np.random.default_rng(0), p_matched=1.0, p_other=0.0, min_cells=0)
    assert np.array_equal(mask, again) and info2["n"] == n
    with pytest.raises(ValueError, match="p_matched"):
        sift_grid_mask(src, ref, np.random.default_rng(0), p_matched=1.5)


def test_grid_masking_prefers_matched_cells_on_toyworld_pairs():
    """Measured masking rates over many toyworld reference_imitation pairs: matched cells ~0.75, others
    ~0.5."""
    from refedit.data.mimicbrush_pairs import sift_grid_mask
    from refedit.data.toyworld import build_sample

    rng = np.random.default_rng(0)
    hit = {True: [0, 0], False: [0, 0]}  # matched? -> [masked, total]
    for seed in range(150):
        s = build_sample("reference_imitation", seed, size=64)
        _, info = sift_grid_mask(_u8(s["source"]), _u8(s["reference"]), rng, min_cells=0)
        for matched in (True, False):
            sel = info["matched"] == matched
            hit[matched][0] += int(info["masked"][sel].sum())
            hit[matched][1] += int(sel.sum())
    rate_m, rate_o = hit[True][0] / hit[True][1], hit[False][0] / hit[False][1]
    print(f"\nmatched cells: {rate_m:.3f} of {hit[True][1]}; other cells: {rate_o:.3f} of {hit[False][1]}")
    assert hit[True][1] >= 300 and hit[False][1] >= 3000
    assert abs(rate_m - 0.75) < 0.07 and abs(rate_o - 0.5) < 0.07


# ----------------------------------------------------------------------------------------------- pairs
class _Images(torch.utils.data.Dataset):
    """Cheap textured images in the batch schema (for the mixing-ratio check)."""

    def __len__(self):
        return 1000

    def __getitem__(self, i):
        from refedit.data.synthetic import textured_image

        img = textured_image((32, 32), np.random.default_rng(i))
        src = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1
        return {
            "source": src,
            "reference": src.flip(-1),
            "target": src.clone(),
            "mask": torch.zeros(1, 32, 32),
            "meta": {"id": i},
        }


def test_mimicbrush_pairs_video_and_pseudo_pairs():
    from refedit.batch import collate_edit, validate_sample
    from refedit.data.mimicbrush_pairs import PAIR_KEYS, MimicBrushPairs
    from refedit.data.toyworld import ToyWorldDataset

    video = ToyWorldDataset("reference_imitation", "train", size=64, length=50)
    only_video = MimicBrushPairs(video, video_ratio=1.0)
    s, raw = only_video[4], video[4]
    assert s["meta"]["pair"] == "video" and tuple(sorted(s)) == tuple(sorted(PAIR_KEYS))
    for k in ("source", "reference", "reference_mask", "target", "depth"):
        assert torch.equal(s[k], raw[k]), k  # only the edit mask is replaced
    n = s["meta"]["grid"]
    assert not torch.equal(s["mask"], raw["mask"]) and s["meta"]["masked_cells"] >= 1
    assert s["mask"].unique().tolist() in ([0.0, 1.0], [1.0])
    assert torch.equal(only_video[4]["mask"], s["mask"])  # deterministic per (seed, epoch, index)
    only_video.set_epoch(1)
    assert not all(
        torch.equal(only_video[i]["mask"], MimicBrushPairs(video, video_ratio=1.0)[i]["mask"])
        for i in range(4)
    )
    assert 3 <= n <= 10

    pseudo = MimicBrushPairs(
        video, ToyWorldDataset("reference_imitation", "val", size=64, length=20), video_ratio=0.0
    )
    p = pseudo[0]
    assert p["meta"]["pair"] == "image" and tuple(sorted(p)) == tuple(sorted(PAIR_KEYS))
    assert torch.equal(p["source"], p["target"]) and (p["reference"] - p["source"]).abs().mean() > 0.05
    assert set(p["reference_mask"].unique().tolist()) == {
        0.0,
        1.0,
    }  # the warp's valid region; black border = 0
    assert (p["reference"][:, p["reference_mask"][0] == 0] <= 1e-6).all()  # border: at most half a pixel
    batch = collate_edit([s, p, only_video[5], pseudo[1]])
    validate_sample({k: v for k, v in batch.items()}, batched=True)

    mixed = MimicBrushPairs(_Images(), None, video_ratio=0.7)
    kinds = [mixed[i]["meta"]["pair"] for i in range(300)]
    assert abs(kinds.count("video") / 300 - 0.7) < 0.08
    no_depth = mixed[0]
    assert torch.equal(no_depth["depth"], torch.zeros(1, 32, 32)) and no_depth["caption"] == ""


def test_data_config_yields_mimicbrush_batches():
    from refedit.batch import validate_sample
    from refedit.data.datamodule import build_datamodule
    from refedit.data.mimicbrush_pairs import MimicBrushPairs
    from refedit.utils.config import compose

    cfg = compose("train", ["method=mimicbrush", "data=toyworld_mimicbrush", "data.batch_size=4"])
    dm = build_datamodule(cfg.data)
    dm.setup()
    assert isinstance(dm.train_set, MimicBrushPairs) and dm.train_set.video_ratio == 0.7
    assert dm.train_set.video.task == "reference_imitation"
    b = next(iter(dm.train_dataloader()))
    validate_sample(b, batched=True)
    assert b["source"].shape == (4, 3, 64, 64) and b["depth"].shape == (4, 1, 64, 64)
    assert {m["pair"] for m in b["meta"]} <= {"video", "image"}


def test_transformers_depth_estimator_from_config():
    """The Depth Anything wrapper (real-scale depth source) on a random tiny config: frozen, [0,1],
    input size."""
    from refedit.methods.mimicbrush import TransformersDepthEstimator

    torch.manual_seed(0)
    backbone = {
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "patch_size": 14,
        "image_size": 56,
        "reshape_hidden_states": False,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }
    est = TransformersDepthEstimator(
        config={
            "model_type": "depth_anything",
            "backbone_config": backbone,
            "neck_hidden_sizes": [8, 16, 32, 32],
            "fusion_hidden_size": 16,
            "head_hidden_size": 8,
            "reassemble_hidden_size": 32,
        },
        input_size=60,
    )
    d = est(torch.rand(2, 3, 64, 48) * 2 - 1)
    assert est.input_size == 56 and d.shape == (2, 1, 64, 48) and d.min() >= 0 and d.max() <= 1
    assert not any(p.requires_grad for p in est.parameters())
    meta = TransformersDepthEstimator(meta=True)  # Depth Anything small, architecture only
    assert next(meta.parameters()).is_meta and sum(p.numel() for p in meta.parameters()) > 20e6


def test_gradient_checkpointing_gives_the_same_gradients(random_parts):
    """With checkpointing the imitative blocks are recomputed in backward and must read the same bank
    (real-scale configs train with it)."""
    torch.manual_seed(0)
    m = MimicBrush(backbone=tiny_backbone(random_parts))
    _randomise_conv_in(m)
    m.train()
    b = _batch(n=3)

    def grads():
        m.zero_grad()
        torch.manual_seed(1)
        cond, _ = m.conditions(b, train=True)
        # a mixed batch: the per-sample routing is recomputed too
        cond["keep"] = torch.tensor([True, False, True])
        m.denoise(torch.randn(3, 4, 16, 16), torch.tensor([100, 500, 900]), cond).pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain = grads()
    m.unet.enable_gradient_checkpointing()
    m.reference_unet.enable_gradient_checkpointing()
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and len(plain) > 100
    # the recomputed forward is the same computation: the same gradients, bit for bit
    assert all(torch.equal(plain[k], ckpt[k]) for k in plain)
