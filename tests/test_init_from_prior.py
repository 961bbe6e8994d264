"""Each method starts from the toy SD prior as its paper starts from Stable Diffusion: every U-Net weight the paper
inherits equals the prior's, and exactly the documented new parts differ (widened conv_in channels start at zero;
new attention / motion / HFA weights are the only keys the prior does not have). Same code path as SD weights:
`backbone.root` points at saved parts in the layout stage 1 writes."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import UNet2DConditionModel

from refedit.utils.config import build_method, compose


def _method(root: str, name: str, *extra: str):
    cfg = compose("train", [f"method={name}", f"backbone.root={root}", "backbone.build_foundations=false",
                            "paths.output_dir=/tmp/refedit-init", *extra])
    return build_method(cfg.method)


@pytest.fixture(scope="module")
def priors(random_parts):
    load = lambda sub: UNet2DConditionModel.from_pretrained(f"{random_parts}/{sub}", subfolder="unet").state_dict()  # noqa: E731
    return {"text_to_image": load("toy-sd"), "inpainting": load("toy-sd-inpainting")}


def assert_inherits(unet: torch.nn.Module, prior: dict[str, torch.Tensor], *, new: str | None = None,
                    dropped: str | None = None, copied_from: tuple[str, str] | None = None) -> None:
    """`unet` holds every prior weight unchanged except: conv_in.weight widened (prior channels first, the new
    ones zero), keys matching `dropped` (removed by the method), and keys matching `new` (the method's own parts,
    which must exist). `copied_from=(a, b)`: a new key with `a` in its name equals the key with `b` instead."""
    sd = unet.state_dict()
    for k, w in prior.items():
        if dropped and re.search(dropped, k):
            assert k not in sd, f"{k} should have been removed"
            continue
        assert k in sd, f"the prior's {k} is missing"
        if k == "conv_in.weight":
            c = w.shape[1]
            assert torch.equal(sd[k][:, :c], w), "conv_in: the prior's input channels changed"
            assert not sd[k][:, c:].any(), "conv_in: new input channels must start at zero"
        else:
            assert torch.equal(sd[k], w), f"{k} differs from the prior's"
    extra = sorted(set(sd) - set(prior))
    if new is None:
        assert not extra, f"undocumented new weights {extra[:5]}"
        return
    bad = [k for k in extra if not re.search(new, k)]
    assert extra and not bad, f"new weights outside the documented parts: {bad[:5]}"
    if copied_from:
        a, b = copied_from
        for k in extra:
            if a in k:
                assert torch.equal(sd[k], prior[k.replace(a, b)]), f"{k} is not a copy of the prior's {b}"


def test_sd_inpainting_baseline_is_the_inpainting_prior(random_parts, priors):
    assert_inherits(_method(random_parts, "sd_inpaint").unet, priors["inpainting"])


def test_sdedit_baseline_is_the_text_to_image_prior(random_parts, priors):
    assert_inherits(_method(random_parts, "sd_inpaint", "method.mode=sdedit").unet, priors["text_to_image"])


def test_paint_by_example_widens_the_text_to_image_prior(random_parts, priors):
    m = _method(random_parts, "paint_by_example")
    assert m.unet.config.in_channels == 9
    assert_inherits(m.unet, priors["text_to_image"])


def test_mimicbrush_imitative_from_inpainting_reference_from_text_to_image(random_parts, priors):
    m = _method(random_parts, "mimicbrush")
    assert m.unet.config.in_channels == 13  # + depth latent, zero-initialised
    assert_inherits(m.unet, priors["inpainting"])
    assert_inherits(m.reference_unet, priors["text_to_image"])


def test_magic_fixup_two_copies_of_the_text_to_image_prior(random_parts, priors):
    """Synthesizer: the text cross-attention (attn2) of the detail blocks becomes the detail-transfer attention,
    initialised as a copy of the block's self-attention (the paper); extractor: no text cross-attention."""
    m = _method(random_parts, "magic_fixup")
    prior = priors["text_to_image"]
    assert_inherits(m.synthesizer, prior, new=r"\.attn2\.processor\.", dropped=r"\.attn2\.to_",
                    copied_from=(".attn2.processor.", ".attn1."))
    assert_inherits(m.extractor, prior, dropped=r"transformer_blocks\.\d+\.(attn2|norm2)\.")


def test_magdiff_inflates_the_text_to_image_prior(random_parts, priors):
    """New: motion modules, the image K/V projections and APA weights of attn2; conv_in widened for HFA."""
    m = _method(random_parts, "magdiff")
    assert_inherits(m.unet, priors["text_to_image"],
                    new=r"\.motion_modules\.|\.attn2\.processor\.(to_[kv]_img\.|alpha_)")


def test_random_init_stays_available(random_parts, priors):
    """backbone.unet.pretrained=null: a random U-Net of the configured architecture, for tests."""
    m = _method(random_parts, "sd_inpaint", "backbone.unet.pretrained=null")
    w = m.unet.state_dict()["down_blocks.0.resnets.0.conv1.weight"]
    assert w.shape == priors["inpainting"]["down_blocks.0.resnets.0.conv1.weight"].shape
    assert not torch.equal(w, priors["inpainting"]["down_blocks.0.resnets.0.conv1.weight"])
