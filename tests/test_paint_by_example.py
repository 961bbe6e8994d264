"""Paint-by-Example: parity of `refedit.edit` with diffusers' PaintByExamplePipeline on an exported checkpoint,
the trainable set, guidance, condition dropout, paste-back, the exemplar encoder, weight loading, full size."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_backbone
from numerics import EPS, FORWARD_REL, assert_close_rel
from refedit.methods.paint_by_example import (
    PaintByExample,
    PaintByExampleImageEncoder,
    build_exemplar_encoder,
    pbe_keep_mask,
)


def _batch(n=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 16:48, 20:44] = 1
    return {"source": torch.rand(n, 3, size, size, generator=g) * 2 - 1, "mask": mask,
            "target": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "reference": torch.rand(n, 3, size, size, generator=g) * 2 - 1}


@pytest.fixture(scope="module")
def model(random_parts):
    torch.manual_seed(0)
    return PaintByExample(backbone=tiny_backbone(random_parts), name="paint_by_example").eval()


@pytest.fixture(scope="module")
def trained_ckpt(random_parts, tmp_path_factory):
    """A checkpoint written by Lightning's `trainer.save_checkpoint` after a few optimiser steps."""
    import lightning as L

    torch.manual_seed(1)
    m = PaintByExample(backbone=tiny_backbone(random_parts), name="paint_by_example",
                       optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3})
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader([_batch(2, seed=i) for i in range(3)], batch_size=None)
    trainer.fit(m, train_dataloaders=loader)
    path = tmp_path_factory.mktemp("pbe_ckpt") / "smoke.ckpt"
    trainer.save_checkpoint(path)
    return path, m.eval()


def _write_inputs(d):
    """Source and mask at the tiny resolution (64); a non-square exemplar of another size, so the feature
    extractor's shortest-edge resize + centre crop is exercised on the original file."""
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(d / "src.png")
    Image.fromarray((rng.random((72, 96, 3)) * 255).astype(np.uint8)).save(d / "ref.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:44] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return {"source": str(d / "src.png"), "mask": str(d / "mask.png"), "reference": str(d / "ref.png")}


def test_parity_edit_cli_with_diffusers_pipeline(trained_ckpt, tmp_path):
    """export -> load component by component -> PaintByExamplePipeline (its own preprocessing, DDIM from the
    export) == `python -m refedit.edit ... paste_back=false` with the same seed, steps and guidance."""
    from diffusers import AutoencoderKL, DDIMScheduler, PaintByExamplePipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor

    from refedit.edit import edit_result
    from refedit.edit import main as edit_main
    from refedit.export import main as export_main

    ckpt, _ = trained_ckpt
    files = _write_inputs(tmp_path)
    argv = [f"ckpt={ckpt}", *(f"{k}={v}" for k, v in files.items()), "seed=3", "steps=5", "guidance=5",
            "paste_back=false"]
    assert edit_main([*argv, f"out={tmp_path / 'ours.png'}"]) == 0
    assert export_main([f"ckpt={ckpt}", f"out={tmp_path / 'pbe'}"]) == 0

    root = tmp_path / "pbe"
    pipe = PaintByExamplePipeline(
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae"),
        image_encoder=PaintByExampleImageEncoder.from_pretrained(root, subfolder="image_encoder"),
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet"),
        scheduler=DDIMScheduler.from_pretrained(root, subfolder="scheduler"),
        safety_checker=None, feature_extractor=CLIPImageProcessor.from_pretrained(root, subfolder="feature_extractor"))
    pipe.set_progress_bar_config(disable=True)

    ref = pipe(example_image=Image.open(files["reference"]), image=Image.open(files["source"]),
               mask_image=Image.open(files["mask"]), num_inference_steps=5, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(3), output_type="np").images[0]  # [0,1] HWC before quantisation

    # before quantisation: the tensors agree to float rounding. Both batch [uncond, cond] alike, so guidance
    # adds no batched-vs-alone difference; the op orders around the networks differ: at most a forward's
    # round-off per step (5) and one for the VAE decode
    ours, _, _ = edit_result({"ckpt": str(ckpt), **files, "seed": "3", "steps": "5", "guidance": "5",
                              "paste_back": "false"})
    ours01 = (ours[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
    diff = float(np.abs(ours01 - ref).max())
    print(f"PbE parity (pre-quantisation tensors): max |diff| = {diff:.2e}")
    assert_close_rel(ours01, ref, rel=(5 + 1) * FORWARD_REL, what="edit CLI vs PaintByExamplePipeline")
    # the PNGs, quantised as the pipeline's PIL output is ((x * 255).round()): a value may differ by one level,
    # and only where the pipeline's value lies within the tensors' difference of a .5 rounding boundary
    png = np.asarray(Image.open(tmp_path / "ours.png")).astype(np.int16)
    pil = (ref * 255).round().astype(np.int16)
    d = np.abs(png - pil)
    near_boundary = np.abs((ref * 255) % 1 - 0.5) <= 255 * (diff + 4 * EPS)
    print(f"PbE parity (PNG): max |diff| = {d.max() / 255:.4f}, values differing: {(d > 0).mean():.2e}")
    assert d.max() <= 1 and not ((d > 0) & ~near_boundary).any()


def test_export_layout_matches_released_checkpoint(trained_ckpt, tmp_path):
    _, m = trained_ckpt
    m.export_diffusers(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "PaintByExamplePipeline"
    assert index["image_encoder"] == ["paint_by_example", "PaintByExampleImageEncoder"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    for sub in ("unet", "vae", "image_encoder", "scheduler", "feature_extractor"):
        assert (tmp_path / sub).is_dir(), sub
    enc = PaintByExampleImageEncoder.from_pretrained(tmp_path, subfolder="image_encoder")
    assert len(enc.mapper.blocks) == 5
    assert torch.equal(enc.uncond_vector, m.image_encoder.uncond_vector)
    assert torch.equal(enc.proj_out.weight, m.image_encoder.proj_out.weight)


def test_init_from_exported_directory(trained_ckpt, random_parts, tmp_path):
    """method.init_from loads unet/ and image_encoder/ of a PbE-layout directory (e.g. the released checkpoint)."""
    _, m = trained_ckpt
    m.export_diffusers(tmp_path / "pbe")
    m2 = PaintByExample(backbone=tiny_backbone(random_parts), init_from=str(tmp_path / "pbe"))
    for a, b in ((m.unet, m2.unet), (m.image_encoder, m2.image_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(Exception, match="init_from"):
        PaintByExample(backbone=tiny_backbone(random_parts), init_from=str(tmp_path / "nowhere"))


def test_gradients_reach_exactly_unet_mapper_ln_proj_uncond(model, monkeypatch):
    """With one exemplar kept and one dropped, every trainable part gets a gradient; CLIP and VAE get none."""
    monkeypatch.setattr(model, "drop_mask", lambda n, p=None: torch.tensor([True, False]))
    model.train()
    try:
        assert not model.image_encoder.model.training  # the frozen tower stays in eval mode
        model.diffusion_loss(_batch(n=2)).backward()
        # the mapper's self-attention sees one token (the CLIP embedding): softmax over one key is constant, so
        # its query/key projections get no gradient in exact arithmetic (only round-off); they stay trainable
        # as in the released model
        single_token_qk = {n for n, _ in model.named_parameters()
                           if n.startswith("image_encoder.mapper.") and (".attn1.to_q." in n or ".attn1.to_k." in n)}
        assert single_token_qk and all(model.get_parameter(n).requires_grad for n in single_token_qk)
        # round-off only: at most a forward's worth relative to the gradient of the attention's value projection
        grad_max = {n: 0.0 if p.grad is None else float(p.grad.abs().max()) for n, p in model.named_parameters()}
        assert all(grad_max[n] <= FORWARD_REL * grad_max[re.sub(r"\.to_[qk]\.", ".to_v.", n)] for n in single_token_qk)
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        trainable = ("unet.", "image_encoder.mapper.", "image_encoder.final_layer_norm.", "image_encoder.proj_out.",
                     "image_encoder.uncond_vector")
        expected = {n for n, _ in model.named_parameters() if n.startswith(trainable)}
        assert with_grad - single_token_qk == expected - single_token_qk
        assert any(n.startswith("image_encoder.mapper.") for n in with_grad)
        assert "image_encoder.uncond_vector" in with_grad
        frozen = [n for n, p in model.named_parameters() if n.startswith(("image_encoder.model.", "codec."))]
        assert frozen and not any(model.get_parameter(n).requires_grad for n in frozen)
        assert {id(p) for p in model.trainable_parameters()} == {id(p) for n, p in model.named_parameters()
                                                                 if n in expected}
        # a batch with no exemplar dropped still puts the unconditional vector in the graph (a zero gradient), so
        # DDP with find_unused_parameters=false never waits for it
        model.zero_grad(set_to_none=True)
        monkeypatch.setattr(model, "drop_mask", lambda n, p=None: torch.zeros(n, dtype=torch.bool))
        model.diffusion_loss(_batch(n=2)).backward()
        assert model.image_encoder.uncond_vector.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_guidance_scale_one_is_conditional_branch(model):
    from refedit.backbone.sampler import CFGGuider

    cond, uncond = model.conditions(_batch(), train=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cond["concat"], uncond["concat"])  # masked latent and mask identical in both branches
    assert torch.equal(uncond["context"], model.image_encoder.uncond_vector.expand(1, -1, -1))
    z, t = torch.randn(1, 4, 16, 16), torch.tensor(500)
    assert torch.equal(CFGGuider(1.0)(model.denoise, z, t, cond, uncond), model.denoise(z, t, cond))
    e_u, e_c = model.denoise(z, t, uncond), model.denoise(z, t, cond)
    # the guider runs both branches in one batch, the references run them alone: a forward's round-off in each
    # branch, which e_u + s (e_c - e_u) amplifies up to 1 + 2s
    for s, want in ((5.0, e_u + 5 * (e_c - e_u)), (0.0, e_u), (0.5, (e_u + e_c) / 2)):  # s = 0: unconditional
        assert_close_rel(CFGGuider(s)(model.denoise, z, t, cond, uncond), want, rel=(1 + 2 * s) * FORWARD_REL,
                         what=f"CFG s={s}")


def test_reference_changes_output_inside_mask(model):
    b = _batch()
    a = model.sample(b, num_steps=3, guidance_scale=5.0, paste_back=False, generator=torch.Generator().manual_seed(1))
    b2 = dict(b, reference=torch.flip(b["reference"], dims=[1]))
    c = model.sample(b2, num_steps=3, guidance_scale=5.0, paste_back=False, generator=torch.Generator().manual_seed(1))
    inside = b["mask"].expand_as(a) > 0
    assert (a - c).abs()[inside].mean() > 1e-4


def test_condition_dropout_modes(model, random_parts):
    p, n = 0.2, 64
    torch.manual_seed(0)
    per_sample = torch.stack([model.drop(n) for _ in range(50)]).float()
    assert model.cond_drop_mode == "per_sample" and model.cond_drop_prob == pytest.approx(0.2)
    assert abs(per_sample.mean().item() - p) < 0.03
    assert ((per_sample.sum(1) > 0) & (per_sample.sum(1) < n)).all()  # samples of one batch dropped independently

    pb = PaintByExample(backbone=tiny_backbone(random_parts), cond_drop_mode="per_batch", cond_drop_prob=p)
    per_batch = torch.stack([pb.drop(n) for _ in range(200)]).float()
    assert ((per_batch.sum(1) == 0) | (per_batch.sum(1) == n)).all()  # all or nothing within a batch
    assert abs(per_batch[:, 0].mean().item() - p) < 0.08
    with pytest.raises(ValueError, match="cond_drop_mode"):
        PaintByExample(backbone=tiny_backbone(random_parts), cond_drop_mode="sometimes")

    # the dropped condition is the learnable unconditional vector
    b = _batch(n=3)
    for prob, expect_uncond in ((1.0, True), (0.0, False)):
        model.cond_drop_prob = prob
        cond, _ = model.conditions(b, train=True)
        is_uncond = (cond["context"] == model.image_encoder.uncond_vector).all(-1).all(-1)
        assert bool(is_uncond.all()) is expect_uncond and bool(is_uncond.any()) is expect_uncond
    model.cond_drop_prob = p


def test_mask_convention_and_channel_order(model):
    """Inside the method PbE's convention holds: keep = 1 - mask; masked image = source * keep (hole = 0)."""
    b = _batch()
    keep = pbe_keep_mask(b["mask"])
    assert torch.equal(keep, 1 - b["mask"])
    concat = model.inpaint_inputs(b, torch.Generator().manual_seed(5))
    expected_latent = model.codec.encode(b["source"] * keep, generator=torch.Generator().manual_seed(5))
    assert torch.equal(concat[:, :4], expected_latent)  # masked-image latent first ...
    assert torch.equal(concat[:, 4:], torch.nn.functional.interpolate(keep, size=(16, 16)))  # ... keep mask last
    assert concat[0, 4, 0, 0] == 1 and concat[0, 4, 8, 8] == 0  # corner kept, centre edited


def test_paste_back_keeps_source_outside_mask(model):
    b = _batch()
    out = model.sample(b, num_steps=2, paste_back=True, generator=torch.Generator().manual_seed(0))
    keep = b["mask"].expand_as(out) == 0
    assert torch.equal(out[keep], b["source"].clamp(-1, 1)[keep])


def test_exemplar_encoder_is_diffusers_class_with_exact_clip(model, random_parts):
    """The tiny 2-layer CLIP is padded with identity layers so diffusers derives 5 mapper blocks; its pooled
    features are bit-identical to the backbone's CLIP."""
    from transformers import CLIPVisionModelWithProjection

    enc = model.image_encoder
    assert isinstance(enc, PaintByExampleImageEncoder)
    assert len(enc.mapper.blocks) == 5 == (enc.config.num_hidden_layers + 1) // 5
    assert enc.proj_out.out_features == model.unet.config.cross_attention_dim
    assert enc.uncond_vector.shape == (1, 1, model.unet.config.cross_attention_dim)
    clip = CLIPVisionModelWithProjection.from_pretrained(f"{random_parts}/toy-sd", subfolder="image_encoder")
    px = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(enc.model(pixel_values=px).pooler_output, clip.vision_model(pixel_values=px).pooler_output)
    assert model.exemplar_tokens(px).shape == (2, 1, model.unet.config.cross_attention_dim)
    assert len(build_exemplar_encoder(clip, 64, None).mapper.blocks) == 0  # what diffusers derives for 2 layers
    with pytest.raises(ValueError, match="mapper_blocks"):
        build_exemplar_encoder(clip, 64, 0)


def test_checkpoint_excludes_frozen_clip_and_reloads(trained_ckpt):
    from refedit.methods import load_method
    from refedit.utils.checkpoint import read_checkpoint

    path, m = trained_ckpt
    keys = read_checkpoint(path)["state_dict"].keys()
    assert not any(k.startswith(("image_encoder.model.", "codec.")) for k in keys)
    assert "image_encoder.uncond_vector" in keys and any(k.startswith("image_encoder.mapper.") for k in keys)
    loaded = load_method(path)
    assert isinstance(loaded, PaintByExample)
    assert torch.equal(loaded.image_encoder.proj_out.weight, m.image_encoder.proj_out.weight)


def test_reference_augment_flag(random_parts):
    from refedit.data.reference_augment import ReferenceAugment
    from refedit.data.self_reference import SelfReference

    m = PaintByExample(backbone=tiny_backbone(random_parts), reference_augment=True)
    # one augmentation for both paths: the method's on-device one is the self-reference data's, same parameters
    assert type(m.reference_aug) is ReferenceAugment and vars(m.reference_aug) == vars(SelfReference().augment)
    b = _batch(n=4)
    torch.manual_seed(0)
    aug = torch.stack([m.reference_pixels(b, train=True) for _ in range(4)])
    plain = m.reference_pixels(b, train=False)
    assert aug.shape[1:] == plain.shape == (4, 3, 64, 64)
    assert (aug - plain).abs().amax(dim=(1, 2, 3, 4)).max() > 0.1  # augmented in training
    assert torch.equal(m.reference_pixels(b, train=False), plain)  # never at sampling


def test_sd_inpainting_weights_are_converted(random_parts, tmp_path):
    """A 9-channel SD-inpainting UNet ([z, mask(1=edit), masked]) loaded for PbE ([z, masked, keep]) computes the
    same conv_in away from the latent border."""
    from diffusers import UNet2DConditionModel

    bb = tiny_backbone(random_parts)
    torch.manual_seed(0)
    sd = UNet2DConditionModel(**{**bb["unet"]["config"], "in_channels": 9})
    sd.save_pretrained(tmp_path / "sd" / "unet")
    m = PaintByExample(backbone=tiny_backbone(random_parts, **{"backbone.unet.pretrained": str(tmp_path / "sd")}))
    z, masked = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    edit = torch.zeros(1, 1, 16, 16)
    edit[..., 4:12, 4:12] = 1
    with torch.no_grad():
        a = sd.conv_in(torch.cat([z, edit, masked], 1))
        b = m.unet.conv_in(torch.cat([z, masked, 1 - edit], 1))
    # one convolution summed in another channel order, the mask weights negated: a few EPS of its 9x9 terms
    assert_close_rel(b[..., 1:-1, 1:-1], a[..., 1:-1, 1:-1], rel=64 * EPS, what="converted conv_in")


def test_full_size_sd14_config_on_meta():
    from refedit.utils.config import build_method, compose

    cfg = compose("train", ["experiment=paint_by_example_sd14"])
    assert cfg.trainer.devices == 8 and cfg.trainer.accelerator == "gpu" and cfg.data.batch_size == 4
    assert cfg.method.optimizer.lr == pytest.approx(1e-5) and cfg.method.lr_scheduler.num_warmup_steps == 10000
    assert cfg.backbone.resolution == 512 and cfg.backbone.gradient_checkpointing
    m = build_method(cfg.method, meta=True)
    enc = m.image_encoder
    n_unet = sum(p.numel() for p in m.unet.parameters())
    counts = {k: sum(p.numel() for p in mod.parameters()) for k, mod in
              (("clip", enc.model), ("mapper", enc.mapper), ("ln", enc.final_layer_norm), ("proj", enc.proj_out))}
    print(f"PbE SD-1.4 on meta: unet {n_unet / 1e6:.2f}M, {counts}, "
          f"trainable {sum(p.numel() for p in m.trainable_parameters()) / 1e6:.2f}M")
    assert m.unet.config.in_channels == 9 and m.unet.config.cross_attention_dim == 768
    assert abs(n_unet - 859.5e6) / 859.5e6 < 1e-3, n_unet
    assert enc.config.num_hidden_layers == 24 and enc.config.hidden_size == 1024 and len(enc.mapper.blocks) == 5
    assert tuple(enc.proj_out.weight.shape) == (768, 1024) and enc.uncond_vector.shape == (1, 1, 768)
    assert m.unet.is_gradient_checkpointing
