"""Magic Fixup: detail cross-attention init, no text/CLIP, conditioning, gradients, sampling start, collage helpers,
the masked-PSNR pipeline and the full-size SD-1.4 architecture on the meta device."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_backbone
from numerics import EPS, FORWARD_REL, assert_close_rel
from refedit.data.holes import fill_holes
from refedit.methods.magic_fixup import (
    DetailCrossAttnProcessor,
    MagicFixup,
    ObjectMove,
    coarse_from_moves,
    null_context,
    valid_from_black,
)

ROOT = Path(__file__).resolve().parents[1]


def _batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(n, 1, size, size)
    valid[:, :, 20:36, 8:24] = 0
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 16:48, 8:48] = 1
    src = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    return {"source": src, "reference": src.clone(), "coarse": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "valid": valid, "mask": mask, "target": torch.rand(n, 3, size, size, generator=g) * 2 - 1}


def _make(random_parts, **kw):
    torch.manual_seed(0)
    m = MagicFixup(backbone=tiny_backbone(random_parts, **kw), name="magic_fixup", cond_drop_prob=0.2)
    with torch.no_grad():  # random weights in the widened channels so coarse/mask/clean-reference inputs matter
        for u in (m.synthesizer, m.extractor):
            u.conv_in.weight[:, 4:].normal_(0, 0.05)
    return m.eval()


@pytest.fixture(scope="module")
def model(random_parts):
    return _make(random_parts)


def _fixed_conds(model, batch, seed=0):
    cond, uncond = model.conditions(batch, train=False, generator=torch.Generator().manual_seed(seed))
    return cond, uncond


def test_detail_cross_attention_starts_as_self_attention(model):
    procs = model.detail_processors()
    assert len(procs) == len(model.detail_block_names) == 7  # toy SD: 2 down, 1 mid, 4 up blocks
    first = model.synthesizer.get_submodule(f"{model.detail_block_names[0]}.attn1")
    h = torch.randn(2, 16, first.to_q.in_features)
    for name, proc in procs.items():
        assert isinstance(proc, DetailCrossAttnProcessor)
        attn1 = model.synthesizer.get_submodule(f"{name}.attn1")
        for part in ("to_q", "to_k", "to_v"):
            new, old = getattr(proc, part), getattr(attn1, part)
            assert torch.equal(new.weight, old.weight) and new.weight.data_ptr() != old.weight.data_ptr()
        assert torch.equal(proc.to_out[0].weight, attn1.to_out[0].weight)
        assert torch.equal(proc.to_out[0].bias, attn1.to_out[0].bias)
    # functionally: attending to a feature equal to the query is exactly the block's self-attention
    name = model.detail_block_names[0]
    attn1 = model.synthesizer.get_submodule(f"{name}.attn1")
    attn2 = model.synthesizer.get_submodule(f"{name}.attn2")
    proc = procs[name]
    proc.bank.write(name, h)
    with torch.no_grad():  # our attention function vs diffusers' processor: one layer's round-off at most
        assert_close_rel(proc(attn2, h), attn1(h), rel=FORWARD_REL, what="detail cross-attention at init")
    proc.bank.clear()


def test_no_text_encoder_and_no_clip_parameters(model):
    from transformers import CLIPTextModel, CLIPVisionModel, CLIPVisionModelWithProjection

    clip = (CLIPTextModel, CLIPVisionModel, CLIPVisionModelWithProjection)
    assert not any(isinstance(mod, clip) for mod in model.modules())
    assert not hasattr(model, "text_encoder") and not hasattr(model, "image_encoder")
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if any(s in n.lower() for s in ("clip", "text_encoder", "image_encoder"))]
    # the text cross-attention projections are gone; only the detail processors' own remain in attn2
    assert not [n for n in names if ".attn2." in n and ".attn2.processor." not in n]
    assert all(".extractor." not in f".{n}" or ".attn2." not in n for n in names)
    for _, blk in [(n, m) for n, m in model.extractor.named_modules() if hasattr(m, "attn1")]:
        assert blk.attn2 is None and blk.norm2 is None
    assert {n.split(".")[0] for n in names} == {"codec", "synthesizer", "extractor"}
    # nothing reads encoder_hidden_states: random context == zero context
    b = _batch(n=1)
    cond, _ = _fixed_conds(model, b)
    z = torch.randn(1, 4, 16, 16)
    t = torch.tensor(500)
    with torch.no_grad():
        ref = model.denoise(z, t, cond)
        syn_in = torch.cat([z, cond["concat"]], 1)
        ctx = null_context(1, model.synthesizer, z)
        a = model.synthesizer(syn_in, t, encoder_hidden_states=ctx).sample
        b2 = model.synthesizer(syn_in, t, encoder_hidden_states=torch.randn_like(ctx) * 10).sample
    assert torch.equal(a, b2) and torch.equal(a, ref)


def test_reference_changes_output(model):
    b = _batch(n=1)
    z = torch.randn(1, 4, 16, 16)
    t = torch.tensor(400)
    other = dict(b, reference=torch.flip(b["reference"], dims=[-1]))
    with torch.no_grad():
        a = model.denoise(z, t, _fixed_conds(model, b)[0])
        c = model.denoise(z, t, _fixed_conds(model, other)[0])
    assert (a - c).abs().mean() > 1e-4
    s1 = model.sample(b, num_steps=3, generator=torch.Generator().manual_seed(1))
    s2 = model.sample(other, num_steps=3, generator=torch.Generator().manual_seed(1))
    assert (s1 - s2).abs().mean() > 1e-4


def test_dropped_conditions_ignore_coarse_and_mask(model):
    b1 = _batch(n=2, seed=0)
    b2 = dict(b1, coarse=torch.rand_like(b1["coarse"]) * 2 - 1, valid=torch.ones_like(b1["valid"]))
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([100, 700])

    def out(batch, p):
        model.cond_drop_prob = p
        try:
            cond, uncond = model.conditions(batch, train=True)
        finally:
            model.cond_drop_prob = 0.2
        assert uncond is None
        torch.manual_seed(3)  # same reference noise (drawn by denoise) for both batches
        with torch.no_grad():
            return model.denoise(z, t, cond)

    assert torch.equal(out(b1, 1.0), out(b2, 1.0))
    assert (out(b1, 0.0) - out(b2, 0.0)).abs().mean() > 1e-4
    # the unconditional branch of sampling is the dropped one
    cond, uncond = _fixed_conds(model, b1)
    assert torch.all(uncond["concat"] == 0) and torch.equal(uncond["ref"], cond["ref"])


def test_condition_dropout_rate_is_per_sample(model):
    torch.manual_seed(0)
    b = _batch(n=1, size=32)
    b = {k: v.expand(64, *v.shape[1:]) for k, v in b.items()}
    cond, _ = model.conditions(b, train=True)
    dropped = (cond["concat"].flatten(1).abs().sum(1) == 0).float().mean().item()
    assert 0.05 < dropped < 0.4


def _grads(m, batch):
    m.train()
    m.zero_grad()
    torch.manual_seed(5)
    loss = m.diffusion_loss(batch)
    loss.backward()
    m.eval()
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def trained_grads(random_parts):
    m = _make(random_parts)
    return m, _grads(m, _batch(n=1, size=32))


def test_gradients_reach_both_unets_and_cross_attentions(trained_grads):
    m, grads = trained_grads
    trainable = {id(p) for p in m.trainable_parameters()}
    names = dict(m.named_parameters())
    # exactly the trainable parameters get gradients, all of them
    assert set(grads) == {n for n, p in names.items() if id(p) in trainable}
    assert not any(n.startswith("codec.") for n in grads)
    ext = [g for n, g in grads.items() if n.startswith("extractor.")]
    assert ext and sum(g.abs().sum() for g in ext) > 0
    for name in m.detail_block_names:
        key = f"synthesizer.{name}.attn2.processor.to_k.weight"
        assert grads[key].abs().sum() > 0, key
    assert grads["extractor.conv_in.weight"].abs().sum() > 0
    # only the extractor's tail after its last captured block (and its output layers) is left out
    dead = {n for n in names if n not in grads and not n.startswith("codec.")}
    assert dead and all(n.startswith("extractor.") for n in dead)
    assert "extractor.conv_out.weight" in dead


def test_gradient_checkpointing_gives_the_same_gradients(trained_grads, random_parts):
    """Checkpointed synthesizer blocks re-read the feature bank in backward: the bank must still hold the
    extractor's features (it is cleared before a pass, not after)."""
    m, grads = trained_grads
    mc = _make(random_parts, **{"backbone.gradient_checkpointing": True})
    assert mc.synthesizer.is_gradient_checkpointing and mc.extractor.is_gradient_checkpointing
    mc.load_state_dict(m.state_dict())
    grads_c = _grads(mc, _batch(n=1, size=32))
    assert set(grads_c) == set(grads)
    for n in grads:  # the recomputed forward is the same computation: the same gradients, bit for bit
        assert torch.equal(grads[n], grads_c[n]), n


def test_checkpoint_roundtrip_keeps_detail_processors(model, random_parts):
    sd = model.state_dict()
    keys = [k for k in sd if ".attn2.processor." in k]
    assert len(keys) == 7 * 5  # to_q, to_k, to_v (no bias), to_out.0 weight + bias
    m2 = MagicFixup(backbone=tiny_backbone(random_parts), name="magic_fixup")
    m2.load_state_dict(sd)
    p1 = model.detail_processors()[model.detail_block_names[-1]]
    p2 = m2.detail_processors()[model.detail_block_names[-1]]
    assert torch.equal(p1.to_v.weight, p2.to_v.weight)


def test_schedule_and_sampling_start(model):
    assert model.schedule.train_scheduler.alphas_cumprod[-1] == 0  # zero terminal SNR
    from refedit.utils.config import compose

    assert compose("train", ["method=magic_fixup"]).method.prediction_type == "v_prediction"  # toyworld default
    sched = model.schedule.ddim()
    sched.set_timesteps(50)
    assert int(sched.timesteps[0]) == 981 and int(sched.timesteps[-1]) == 1
    b = _batch(n=1)
    from refedit.backbone.sampler import sdedit_timesteps

    ts = sdedit_timesteps(sched, 50, 1.0)
    noise = torch.randn(1, 4, 16, 16)
    z = model.prepare_start(noise.clone(), b, sched, ts, None)
    want = sched.add_noise(model.coarse_latents(b), noise, ts[:1])
    assert torch.equal(z, want)
    assert not torch.allclose(z, noise)
    # a truncated schedule (start_strength < 1) is already started from the coarse latent by the base
    ts_half = sdedit_timesteps(sched, 50, 0.5)
    assert torch.equal(model.prepare_start(noise, b, sched, ts_half, None), noise)
    out = model.sample(b, num_steps=2, strength=0.5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_fill_holes_inpaints_only_near_holes():
    y, x = torch.meshgrid(torch.linspace(-0.8, 0.8, 64), torch.linspace(-0.8, 0.8, 64), indexing="ij")
    img = torch.stack([x, y, (x + y) / 2])[None]
    valid = torch.ones(1, 1, 64, 64)
    valid[:, :, 24:40, 24:40] = 0
    holed = torch.where(valid > 0, img, torch.zeros_like(img) - 1)
    out = fill_holes(holed, valid, radius=3, dilation=7)
    far = torch.ones(64, 64, dtype=torch.bool)
    far[21:43, 21:43] = False  # outside the 7x7-dilated hole nothing changes
    assert torch.equal(out[0][:, far], holed[0][:, far])
    hole = valid[0, 0] == 0
    err_filled = (out[0][:, hole] - img[0][:, hole]).abs().mean()
    assert err_filled < 0.1 < (holed[0][:, hole] - img[0][:, hole]).abs().mean()
    assert torch.equal(fill_holes(img, torch.ones(1, 1, 64, 64)), img)


def _encoded_images(model, batch, **kw):
    """The images `coarse_latents` hands to the VAE."""
    seen = []
    encode = model.codec.encode

    def spy(x, *a, **k):
        seen.append(x.detach().clone())
        return encode(x, *a, **k)

    model.codec.encode = spy
    try:
        model.coarse_latents(batch, **kw)
    finally:
        del model.codec.encode  # the instance attribute; the class's method is back
    return seen[0]


def test_hole_band_scales_with_image_size(model):
    """The authors' 7x7 dilation (3-px reach) and inpainting radius are for 512-px images: at size S the band of exact
    coarse pixels that the dilation hands to inpainting reaches round(3 S / 512) px (64 px: 0, no exact pixel lost;
    256 px: 2; 512 px: 3), and the radius scales alike (inference 3, training 5 at 512)."""
    import cv2

    for size, reach in ((64, 0), (256, 2), (512, 3)):
        g = torch.Generator().manual_seed(size)
        coarse = torch.rand(1, 3, size, size, generator=g) * 2 - 1
        valid = torch.ones(1, 1, size, size)
        a, b = size * 3 // 8, size * 5 // 8
        valid[:, :, a:b, a:b] = 0
        holed = torch.where(valid > 0, coarse, torch.full_like(coarse, -1.0))
        seen = _encoded_images(model, {"coarse": holed, "valid": valid})
        changed = (seen[0] != holed[0]).any(0).numpy()
        hole = (valid[0, 0] < 0.5).numpy().astype(np.uint8)
        within = cv2.dilate(hole, np.ones((2 * reach + 1,) * 2, np.uint8)).astype(bool)
        assert not (changed & ~within).any(), (size, reach)  # nothing changes beyond the scaled band
        if reach:  # and the band reaches that far (noise pixels: inpainting changes nearly all of them)
            inner = cv2.dilate(hole, np.ones((2 * reach - 1,) * 2, np.uint8)).astype(bool)
            assert (changed & within & ~inner).mean() > 0.5 * (within & ~inner).mean(), (size, reach)
    assert model.hole_fill.at((512, 512)) == (7, 3.0) and model.data_transform().fill.at((512, 512)) == (7, 5.0)
    assert model.hole_fill.at((64, 64)) == (1, 1.0) and model.hole_fill.at((1024, 768)) == (11, 5.0)
    from refedit.data.holes import HoleFill

    assert HoleFill(7, 3.0, None).at((64, 64)) == (7, 3.0)  # hole_reference_px=null: the absolute pixel values


def test_training_holes_are_filled_by_the_data_workers(random_parts, model):
    """refedit.train builds the DataModule with the method's data transform: training batches carry coarse_filled
    (the authors' training radius), and the training step then runs no OpenCV. Batches without it (benchmarks,
    refedit.edit) are still filled by the method, with the inference radius."""
    from unittest import mock

    from refedit.data.datamodule import build_datamodule
    from refedit.utils.config import compose

    cfg = compose("train", ["method=magic_fixup", f"backbone.root={random_parts}", "data.batch_size=2",
                            "data.val_dataset.length=2"])
    dm = build_datamodule(cfg.data, model)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "coarse_filled" in batch and "coarse_filled" not in dm.train_set[0]  # added by the loader's workers
    assert torch.equal(batch["coarse_filled"], model.train_hole_fill(batch["coarse"], batch["valid"]))
    assert "coarse_filled" in next(iter(dm.val_dataloader()))
    model.train()
    try:
        with mock.patch("refedit.data.holes.fill_holes", side_effect=AssertionError("filled in the training step")):
            loss = model.diffusion_loss(batch)
    finally:
        model.eval()
    assert torch.isfinite(loss)
    bare = {k: v for k, v in batch.items() if k != "coarse_filled"}
    assert torch.equal(_encoded_images(model, bare), model.hole_fill(batch["coarse"], batch["valid"]))


def test_extractor_noise_is_fresh_at_every_sampling_step(model):
    """The release re-noises the reference (q_sample with new noise) at every denoiser call; so does refedit, from
    the sampling generator (the same seed gives the same sample)."""
    b = _batch(n=1)
    seen = []
    hook = model.extractor.register_forward_pre_hook(lambda mod, args: seen.append((args[0].clone(), args[1])))
    try:
        s1 = model.sample(b, num_steps=3, generator=torch.Generator().manual_seed(7))
    finally:
        hook.remove()
    assert len(seen) == 3
    abar = model.schedule.train_scheduler.alphas_cumprod
    noises = []
    for x, t in seen:
        a = abar[int(t.reshape(-1)[0])]
        noises.append((x[:, :4] - a.sqrt() * x[:, 4:8]) / (1 - a).sqrt())  # the noise the extractor's input carries
    for n in noises:
        assert 0.8 < float(n.std()) < 1.2
    for i in range(3):
        for j in range(i):
            assert (noises[i] - noises[j]).abs().mean() > 0.5, (i, j)  # independent draws differ by ~1.13 on average
    s2 = model.sample(b, num_steps=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(s1, s2)


def test_sd14_experiment_uses_the_authors_optimiser():
    """experiment=magic_fixup_sd14: AdamW lr 1e-5, weight decay 0.01 (torch's default, which the authors' AdamW
    keeps), linear warm-up over 10k steps then constant (their LambdaLinearScheduler), no EMA (use_ema: False)."""
    from types import SimpleNamespace

    from refedit.methods.base import LatentEditModule
    from refedit.utils.config import compose, to_dict

    cfg = compose("train", ["experiment=magic_fixup_sd14"])
    assert cfg.callbacks.get("ema") is None
    m = cfg.method
    p = torch.nn.Parameter(torch.zeros(1))
    holder = SimpleNamespace(optimizer_cfg=to_dict(m.optimizer), lr_scheduler_cfg=to_dict(m.lr_scheduler),
                             trainable_parameters=lambda: [p])
    out = LatentEditModule.configure_optimizers(holder)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and out["lr_scheduler"]["interval"] == "step"
    assert opt.defaults["lr"] == 1e-5 and opt.defaults["weight_decay"] == 0.01
    lr = {step: 1e-5 * sched.lr_lambdas[0](step) for step in (0, 2500, 5000, 10000, 20000, 120000)}
    assert lr[0] == 0.0 and abs(lr[2500] - 2.5e-6) < 1e-12 and abs(lr[5000] - 5e-6) < 1e-12
    assert lr[10000] == lr[20000] == lr[120000] == 1e-5


def test_coarse_from_moves_and_black_holes():
    img = np.full((64, 64, 3), 100, np.uint8)
    img[10:20, 10:20] = (250, 20, 20)
    obj = np.zeros((64, 64), bool)
    obj[10:20, 10:20] = True
    coarse, valid = coarse_from_moves(img, [ObjectMove(obj, dx=30, dy=5)])
    assert coarse.shape == (3, 64, 64) and valid.shape == (1, 64, 64)
    red = torch.tensor([250, 20, 20]) / 127.5 - 1  # the uint8 -> [-1, 1] map written another way: a rounding or two
    assert_close_rel(coarse[:, 17, 42], red, rel=8 * EPS, what="moved object at its new place")
    assert valid[0, 17, 42] == 1 and valid[0, 12, 12] == 0  # vacated region is a hole
    assert torch.all(coarse[:, valid[0] == 0] == -1)
    assert valid[0, 40, 40] == 1
    assert_close_rel(coarse[:, 40, 40], torch.full((3,), 100 / 127.5 - 1), rel=8 * EPS, what="background")
    # scaling about the centroid grows the object
    _, v2 = coarse_from_moves(img, [ObjectMove(obj, dx=30, scale=2.0)])
    c2, _ = coarse_from_moves(img, [ObjectMove(obj, dx=30, scale=2.0)])
    assert ((c2[0] > 0.9) & (v2[0] > 0)).sum() > 3 * obj.sum()
    # holes of a collage without a valid file: pure black pixels
    assert torch.equal(valid_from_black(coarse[None])[0], valid)
    with pytest.raises(ValueError, match="shape"):
        coarse_from_moves(img, [ObjectMove(obj[:32])])


def test_prepare_edit_batch_and_edit_moves(model):
    b = _batch(n=1)
    c = b["coarse"].clone()
    c[:, :, :8, :8] = -1
    out = model.prepare_edit_batch({"source": b["source"], "coarse": c, "valid": torch.ones(1, 1, 64, 64)})
    assert out["valid"][0, 0, :8, :8].sum() == 0 and out["valid"].sum() == 64 * 64 - 64
    given = torch.ones(1, 1, 64, 64)
    given[..., 30:, 30:] = 0
    assert torch.equal(model.prepare_edit_batch({"coarse": c, "valid": given})["valid"], given)
    obj = np.zeros((64, 64), bool)
    obj[10:20, 10:20] = True
    res = model.edit_moves(b["source"][0], [ObjectMove(obj, dx=8)], num_steps=2,
                           generator=torch.Generator().manual_seed(0))
    assert res.shape == (3, 64, 64) and torch.isfinite(res).all()


def _psnr_script():
    spec = importlib.util.spec_from_file_location("magic_fixup_smoke_psnr",
                                                  ROOT / "experiments" / "magic_fixup_smoke_psnr.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_masked_psnr_pipeline(model):
    mod = _psnr_script()
    t = torch.zeros(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    p = t.clone()
    p[0, :, :4] += 0.2  # 0.1 in [0,1] inside the mask -> 20 dB
    p[1, :, 4:] += 1.0  # outside the mask only: ignored
    v = mod.masked_psnr(p, t, mask)
    assert abs(v[0].item() - 20.0) < 1e-3 and v[1].item() > 90
    from refedit.data.toyworld import ToyWorldDataset

    ds = ToyWorldDataset("coarse_edit", split="benchmark", length=8)
    res = mod.evaluate(model, ds, batch_size=4, num_steps=2)
    assert set(res) == {"coarse", "coarse_filled", "vae_coarse", "vae_target", "fixup", "latent_coarse",
                        "latent_fixup"}
    assert all(np.isfinite(list(res.values())))
    assert res["coarse_filled"] > res["coarse"]  # inpainted holes are closer to the target than grey holes (on average:
    # not on every sample)
    z, zt = torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    z[0, :, 0, 0] = 2.0  # in the masked cell: (2^2) over 1 cell
    z[1, :, 1, 1] = 5.0  # outside the mask: ignored
    pix = torch.zeros(2, 1, 8, 8)
    pix[:, :, 1, 2] = 1  # one pixel inside latent cell (0, 0)
    assert torch.equal(mod.masked_latent_mse(z, zt, pix), torch.tensor([4.0, 0.0]))  # exact in float arithmetic
    res2 = mod.evaluate(model, ds, batch_size=4, num_steps=2, samples=2)
    assert {"latent_mean", "latent_spread", "fixup_avg"} <= set(res2)
    assert res2["latent_spread"] > 0  # eta=1 samples with different seeds differ
    # a sample's error = its mean's error + its spread around the mean (exact, per sample), up to float32 sums of
    # a few thousand squares (pairwise: ~log2(n) EPS each) and the mean's own rounding in the cross term
    assert_close_rel(res2["latent_mean"] + res2["latent_spread"], res2["latent_fixup"], rel=64 * EPS,
                     what="latent error decomposition")
    assert res2["coarse"] == res["coarse"] and res2["latent_coarse"] == res["latent_coarse"]
    with pytest.raises(ValueError, match="samples"):
        mod.evaluate(model, ds, batch_size=2, num_steps=2, samples=0)


def test_latent_output_is_what_image_output_decodes(model):
    from refedit.batch import collate_edit
    from refedit.data.toyworld import ToyWorldDataset

    b = collate_edit([ToyWorldDataset("coarse_edit", split="benchmark", length=1)[0]])
    z = model.sample(b, num_steps=2, generator=torch.Generator().manual_seed(3), output_type="latent")
    img = model.sample(b, num_steps=2, generator=torch.Generator().manual_seed(3))
    assert z.shape == (1, model.codec.latent_channels, 16, 16)
    assert torch.equal(model.decode(z, b).clamp(-1, 1), img)  # image output = the latent output decoded
    with pytest.raises(ValueError, match="output_type"):
        model.sample(b, num_steps=2, output_type="pil")


def test_full_size_sd14_on_meta():
    from refedit.utils.config import build_method, compose

    cfg = compose("train", ["experiment=magic_fixup_sd14"])
    assert cfg.backbone.name == "sd14" and cfg.backbone.resolution == 512 and cfg.backbone.gradient_checkpointing
    assert cfg.trainer.devices == 8 and cfg.trainer.accelerator == "gpu" and cfg.data.batch_size == 4
    from hydra.utils import instantiate

    strategy = instantiate(cfg.trainer.strategy, _convert_="all")
    assert "SHARD_GRAD_OP" in str(strategy.sharding_strategy)
    m = build_method(cfg.method, meta=True)
    assert isinstance(m, MagicFixup)
    assert m.schedule.prediction_type == "epsilon"  # the authors' parameterisation at paper scale
    assert m.schedule.train_scheduler.alphas_cumprod[-1] == 0
    assert m.synthesizer.config.in_channels == 9 and m.extractor.config.in_channels == 9
    assert len(m.detail_block_names) == 16  # 6 down, 1 mid, 9 up
    n_syn = sum(p.numel() for p in m.synthesizer.parameters())
    n_ext = sum(p.numel() for p in m.extractor.parameters())
    n_proc = sum(p.numel() for pr in m.detail_processors().values() for p in pr.parameters())
    n_train = sum(p.numel() for p in m.trainable_parameters())
    print(f"\nmagic_fixup sd14: synthesizer {n_syn / 1e6:.2f}M (detail cross-attn {n_proc / 1e6:.2f}M), "
          f"extractor {n_ext / 1e6:.2f}M, trainable {n_train / 1e6:.2f}M")
    assert abs(n_proc - 49.574e6) / 49.574e6 < 1e-3, n_proc
    assert abs(n_syn - 865.147e6) / 865.147e6 < 1e-3, n_syn
    assert abs(n_ext - 815.548e6) / 815.548e6 < 1e-3, n_ext
    assert n_syn + n_ext - 2e6 < n_train < n_syn + n_ext


def test_toyworld_video_mix_data_config(tmp_path):
    """The mixed data config yields batches with every key the method trains on, from both sources."""
    from refedit.batch import validate_sample
    from refedit.data.datamodule import build_datamodule
    from refedit.data.synthetic import write_video_folder
    from refedit.utils.config import compose

    root = write_video_folder(tmp_path / "videos", videos=2, size=(128, 128), frames=48)
    cfg = compose("train", ["method=magic_fixup", "data=toyworld_video_mix", f"data.root={root}",
                            "data.toyworld_length=3", "data.samples_per_video=2", "data.batch_size=7"])
    dm = build_datamodule(cfg.data)
    dm.setup()
    assert len(dm.train_set) == 7
    batch = dm.train_set.datasets[1][0]
    validate_sample({k: v for k, v in batch.items() if k != "meta"})
    assert batch["meta"]["motion"] in ("flow", "piecewise_affine")
    b = next(iter(dm.train_dataloader()))
    assert set(MagicFixup.train_keys) <= set(b) and b["coarse"].shape == (7, 3, 64, 64)
    assert {m.get("task", "video") for m in b["meta"]} == {"coarse_edit", "video"}


def test_detail_blocks_subset_and_trainable_set_trace(random_parts):
    """detail_blocks=[down]: only the down blocks get a detail cross-attention, the synthesizer's other blocks have no
    cross-attention at all, and the extractor's mid/up path is left out of training. The trainable set found on
    the width-scaled twin is exactly the set that real gradients reach."""
    torch.manual_seed(0)
    m = MagicFixup(backbone=tiny_backbone(random_parts), name="magic_fixup", detail_blocks=["down"])
    assert m.detail_block_names == ["down_blocks.1.attentions.0.transformer_blocks.0",
                                    "down_blocks.2.attentions.0.transformer_blocks.0"]
    assert m.synthesizer.get_submodule("mid_block.attentions.0.transformer_blocks.0").attn2 is None
    assert not any(n.startswith(("extractor.mid_block.", "extractor.up_blocks.")) for n in m.live_parameter_names)
    assert any(n.startswith("synthesizer.up_blocks.") for n in m.live_parameter_names)
    grads = _grads(m, _batch(n=1, size=32))
    assert set(grads) == set(m.live_parameter_names)
