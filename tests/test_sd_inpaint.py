"""SD-inpainting baseline: parity with diffusers, the pretrained loading path, full-size architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_backbone
from numerics import FORWARD_REL, assert_close_rel
from refedit.methods.sd_inpaint import SDInpaint


def _batch(n=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 16:48, 20:44] = 1
    return {"source": torch.rand(n, 3, size, size, generator=g) * 2 - 1, "mask": mask,
            "target": torch.rand(n, 3, size, size, generator=g) * 2 - 1, "caption": ["a red star"] * n}


@pytest.fixture(scope="module")
def model(random_parts):
    torch.manual_seed(0)
    m = SDInpaint(backbone=tiny_backbone(random_parts), name="sd_inpaint")
    with torch.no_grad():  # random non-zero weights in the widened channels so mask inputs matter
        m.unet.conv_in.weight.normal_(0, 0.05)
    return m.eval()


def _quantised(b):
    """The batch with its source exactly representable as 8-bit (what a pipeline is given), and that image."""
    from PIL import Image

    src = ((b["source"][0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    b = dict(b, source=torch.from_numpy(src.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None])
    return b, Image.fromarray(src)


# strength < 1: diffusers encodes the start image (a posterior sample, with the generator) before drawing the noise
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_parity_with_diffusers_inpaint_pipeline(model, tmp_path, strength):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    model.export_diffusers(tmp_path / "pipe")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    b, src = _quantised(_batch())
    out_ref = pipe(prompt=b["caption"], image=src, mask_image=Image.fromarray(
        (b["mask"][0, 0].numpy() * 255).astype(np.uint8)), height=64, width=64, num_inference_steps=5,
        strength=strength, guidance_scale=4.0, generator=torch.Generator().manual_seed(7), output_type="pt").images
    ours = model.sample(b, num_steps=5, guidance_scale=4.0, strength=strength,
                        generator=torch.Generator().manual_seed(7))
    ours01 = (ours / 2 + 0.5).clamp(0, 1)
    assert out_ref.shape == ours01.shape
    # both batch [uncond, cond] alike, so guidance adds no batched-vs-alone difference; the op orders around the
    # networks differ: at most a forward's round-off per step (5) and one for the VAE decode
    assert_close_rel(ours01, out_ref, rel=(5 + 1) * FORWARD_REL, what="sample vs inpaint pipeline")


@pytest.fixture(scope="module")
def t2i_unet_dir(random_parts, tmp_path_factory):
    """A random 4-channel text-to-image U-Net of the tiny config, saved in diffusers layout."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(3)
    t2i = UNet2DConditionModel(**tiny_backbone(random_parts)["unet"]["config"])
    root = tmp_path_factory.mktemp("t2i")
    t2i.save_pretrained(root / "unet")
    return str(root)


@pytest.fixture(scope="module")
def sdedit(random_parts, t2i_unet_dir):
    bb = tiny_backbone(random_parts, **{"backbone.unet.pretrained": t2i_unet_dir})
    return SDInpaint(backbone=bb, mode="sdedit").eval()


def test_sdedit_runs_the_text_to_image_unet_unwidened(sdedit, t2i_unet_dir):
    from diffusers import UNet2DConditionModel

    saved = UNet2DConditionModel.from_pretrained(t2i_unet_dir, subfolder="unet")
    assert sdedit.unet.config.in_channels == 4
    assert all(torch.equal(a, b) for a, b in zip(sdedit.unet.state_dict().values(), saved.state_dict().values()))
    assert sdedit.sampling_cfg["strength"] == 0.4  # the Magic Fixup paper's SDEdit baseline
    assert sdedit.train_keys == ("target", "caption") and sdedit.sample_keys == ("source", "caption")


@pytest.mark.parametrize("strength", [0.4, 0.6])
def test_sdedit_parity_with_diffusers_img2img_pipeline(sdedit, tmp_path, strength):
    """SDEdit at strength s with seed k is StableDiffusionImg2ImgPipeline on the same 4-channel weights."""
    from diffusers import StableDiffusionImg2ImgPipeline

    sdedit.export_diffusers(tmp_path / "pipe")
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 4
    b, src = _quantised(_batch())
    b.pop("mask")
    out_ref = pipe(prompt=b["caption"], image=src, strength=strength, num_inference_steps=10, guidance_scale=4.0,
                   generator=torch.Generator().manual_seed(7), output_type="pt").images
    ours = sdedit.sample(b, num_steps=10, guidance_scale=4.0, strength=strength,
                         generator=torch.Generator().manual_seed(7))
    ours01 = (ours / 2 + 0.5).clamp(0, 1)
    assert out_ref.shape == ours01.shape
    # at most a forward's round-off per step run (strength x 10 <= 6) plus the VAE encode and decode
    assert_close_rel(ours01, out_ref, rel=(6 + 2) * FORWARD_REL, what="SDEdit vs img2img pipeline")
    # the coarse edit, when given, is what SDEdit starts from
    coarse = sdedit.sample({**b, "coarse": -b["source"]}, num_steps=10, guidance_scale=4.0, strength=strength,
                           generator=torch.Generator().manual_seed(7))
    assert (coarse - ours).abs().mean() > 1e-2


def test_sdedit_trains_text_to_image_on_image_and_caption(sdedit):
    b = {k: v for k, v in _batch(n=2).items() if k in ("target", "caption")}
    sdedit.train()
    sdedit.training_step(b, 0).backward()
    with_grad = {n for n, p in sdedit.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in sdedit.named_parameters() if n.startswith("unet.")}
    sdedit.zero_grad()
    sdedit.eval()


def test_sdedit_refuses_an_inpainting_unet(random_parts, tmp_path):
    from diffusers import UNet2DConditionModel

    bb = tiny_backbone(random_parts)
    UNet2DConditionModel(**{**bb["unet"]["config"], "in_channels": 9}).save_pretrained(tmp_path / "inp" / "unet")
    bb = tiny_backbone(random_parts, **{"backbone.unet.pretrained": str(tmp_path / "inp")})
    with pytest.raises(ValueError, match="text-to-image U-Net.*9 input channels"):
        SDInpaint(backbone=bb, mode="sdedit")


def test_guidance_scale_one_is_conditional_branch(model):
    from refedit.backbone.sampler import CFGGuider

    b = _batch()
    cond, uncond = model.conditions(b, train=False, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 4, 16, 16)
    t = torch.tensor(500)
    single = CFGGuider(1.0)(model.denoise, z, t, cond, uncond)
    batched_u, batched_c = model.denoise(torch.cat([z, z]), t, {k: torch.cat([uncond[k], cond[k]]) for k in cond}).chunk(2)
    assert torch.equal(single, model.denoise(z, t, cond))
    # batched vs alone: a forward's round-off in each branch, u + s (c - u) amplifies it up to 1 + 2s
    assert_close_rel(batched_u + 1.0 * (batched_c - batched_u), single, rel=3 * FORWARD_REL, what="batched s=1")


def test_caption_changes_output(model):
    b = _batch()
    a = model.sample(b, num_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(1))
    b2 = dict(b, caption=["a blue circle moving left"])
    c = model.sample(b2, num_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(1))
    assert (a - c).abs().mean() > 1e-4


def test_only_unet_trains(model):
    b = _batch(n=2)
    model.train()
    loss = model.diffusion_loss(b)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    unet = {n for n, _ in model.named_parameters() if n.startswith("unet.")}
    assert with_grad == unet
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("unet."))
    model.zero_grad()
    model.eval()


def test_paste_back_keeps_source_outside_mask(model):
    b = _batch()
    out = model.sample(b, num_steps=2, paste_back=True, generator=torch.Generator().manual_seed(0))
    keep = b["mask"].expand_as(out) == 0
    assert torch.equal(out[keep], b["source"].clamp(-1, 1)[keep])


def test_pretrained_unet_loads_and_widens(model, random_parts, tmp_path):
    """A 4-channel text-to-image UNet saved in diffusers layout loads via backbone.unet.pretrained and is widened
    to 9 channels with zero-initialised new channels, exactly as SD-1.5 text-to-image weights would be."""
    from diffusers import UNet2DConditionModel

    bb = tiny_backbone(random_parts)
    t2i = UNet2DConditionModel(**bb["unet"]["config"])
    t2i.save_pretrained(tmp_path / "sd" / "unet")
    bb = tiny_backbone(random_parts, **{"backbone.unet.pretrained": str(tmp_path / "sd")})
    m = SDInpaint(backbone=bb, unet_init="text_to_image")  # the default (inpainting) loads pretrained_inpaint
    w = m.unet.conv_in.weight
    assert w.shape[1] == 9 and m.unet.config.in_channels == 9
    assert torch.equal(w[:, :4], t2i.conv_in.weight) and torch.all(w[:, 4:] == 0)
    assert torch.equal(m.unet.conv_in.bias, t2i.conv_in.bias)


def test_full_size_sd15_inpainting_on_meta():
    from refedit.utils.config import compose, to_dict

    cfg = compose("train", ["backbone=sd15_inpaint", "method=sd_inpaint"])
    m = SDInpaint(backbone=to_dict(cfg.backbone), meta=True)
    n = sum(p.numel() for p in m.unet.parameters())
    assert m.unet.config.in_channels == 9
    assert abs(n - 859.5e6) / 859.5e6 < 1e-3, n
