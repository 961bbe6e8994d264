"""Stage-1 foundations (refedit.foundations): complete diffusers roots that stock pipelines load, cached per
budget and rebuilt when the asked budget differs, config errors that name the key."""

from __future__ import annotations

import json

import pytest
import torch

from refedit.foundations import (
    PARTS,
    FoundationsConfig,
    ensure_foundations,
    foundations_config,
    foundations_ready,
    stage1_config,
)
from refedit.utils.config import compose, to_dict

TINY_BUDGET = dict(vae_steps=2, vae_images=24, vae_batch=4, clip_steps=2, clip_images=24, clip_batch=8,
                   probe_steps=2, probe_images=24, probe_batch=8, locator_steps=2, prior_images=24, prior_steps=2,
                   prior_batch=4, inpaint_steps=2, eval_captions=2, eval_steps=2, prior_curve=[1])


def _tiny_cfg(**kw) -> FoundationsConfig:
    unet = to_dict(compose("train", ["paths.output_dir=/tmp/x"]).foundations.unet)
    return foundations_config({**TINY_BUDGET, **kw}, unet=unet)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = _tiny_cfg()
    return ensure_foundations(tmp_path_factory.mktemp("found") / "f", cfg), cfg


def test_foundations_cached_per_budget(built, monkeypatch):
    out, cfg = built
    info = json.loads((out / "foundations.json").read_text())
    assert info["config"]["vae_steps"] == 2 and foundations_ready(out, cfg)
    assert all((out / p).is_dir() for p in PARTS)
    assert not list(out.parent.glob("*.tmp-*")), "the temp dir was renamed into place"
    curve = info["parts"]["text_to_image_unet"]["curve"]
    assert [c["step"] for c in curve] == [1, 2], "the curve holds the asked steps and the final one"
    assert curve[0]["stage1_minutes"] <= curve[1]["stage1_minutes"]
    import refedit.foundations.build as fb

    monkeypatch.setattr(fb, "build_foundations", lambda *a, **k: pytest.fail("rebuilt cached foundations"))
    assert ensure_foundations(out, cfg) == out
    assert not foundations_ready(out, _tiny_cfg(vae_steps=3)), "foundations of another budget must not be reused"


def test_roots_load_in_stock_diffusers_pipelines(built):
    """toy-sd and toy-sd-inpainting are complete model roots: the stock pipelines load and run them."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    out, _ = built
    pipe = StableDiffusionPipeline.from_pretrained(str(out / "toy-sd"))
    assert pipe.unet.config.in_channels == pipe.vae.config.latent_channels == 4
    img = pipe("a plain red star", height=64, width=64, num_inference_steps=2, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()
    inp = StableDiffusionInpaintPipeline.from_pretrained(str(out / "toy-sd-inpainting"))
    assert inp.unet.config.in_channels == 2 * inp.vae.config.latent_channels + 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 16:40] = 1
    img = inp("a plain red star", image=torch.zeros(1, 3, 64, 64), mask_image=mask, height=64, width=64,
              num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


def test_inpainting_unet_is_fine_tuned_from_the_text_to_image_one(built):
    """SD-inpainting's recipe: the 9-channel U-Net starts as the text-to-image U-Net with zero new conv_in
    channels; after (here two) fine-tuning steps it stays close to it, far closer than an independent init."""
    from diffusers import UNet2DConditionModel

    out, _ = built
    t2i = UNet2DConditionModel.from_pretrained(str(out / "toy-sd"), subfolder="unet").state_dict()
    inp = UNet2DConditionModel.from_pretrained(str(out / "toy-sd-inpainting"), subfolder="unet").state_dict()
    assert set(t2i) == set(inp)
    w = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    rel = float((inp[w] - t2i[w]).norm() / t2i[w].norm())
    assert rel < 0.2, f"the inpainting U-Net drifted {rel:.2f} from the text-to-image one in two steps"


def test_foundation_budgets_compose_to_distinct_cache_dirs():
    default = compose("compare", ["paths.output_dir=/tmp/x"])
    smoke = compose("compare", ["paths.output_dir=/tmp/x", "preset=smoke"])
    assert default.foundations.name != smoke.foundations.name
    assert default.paths.foundations_dir != smoke.paths.foundations_dir
    assert default.paths.probe_dir != smoke.paths.probe_dir
    assert "foundations=quick" in smoke.preset.train_overrides, "smoke trainings must use the smoke foundations"
    train_smoke = compose("train", ["paths.output_dir=/tmp/x", "experiment=smoke"])
    assert train_smoke.foundations.name == smoke.foundations.name, "make train PRESET=smoke uses the quick stage 1"
    assert stage1_config(default.foundations) != stage1_config(smoke.foundations)


def test_unknown_budget_key_is_named():
    with pytest.raises(KeyError, match=r"foundations\.stage1.*vae_stepz"):
        foundations_config({"vae_stepz": 3})


def test_tiny_backbone_points_at_the_roots_as_sd15_does():
    """backbone=tiny names a text-to-image root and an inpainting root, as backbone=sd15 does: one loading path."""
    tiny = compose("train", ["paths.output_dir=/tmp/x"]).backbone
    sd15 = compose("train", ["paths.output_dir=/tmp/x", "backbone=sd15"]).backbone
    for bb in (tiny, sd15):
        assert bb.unet.pretrained == bb.pretrained and bb.unet.pretrained_inpaint == bb.pretrained_inpaint
    assert tiny.pretrained.endswith("/toy-sd") and tiny.pretrained_inpaint.endswith("/toy-sd-inpainting")
