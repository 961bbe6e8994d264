"""The U-Net input layout has one source, the VAE's `latent_channels`: with an 8-channel VAE every method builds,
trains a step and samples, its U-Nets' widths derived from it (SD's 4 -> 9 / 13 become 17 / 25), and a U-Net that
does not fit the VAE is refused with a message naming both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import yaml

from refedit.utils.config import build_method, compose, to_dict

ROOT = Path(__file__).resolve().parents[1]
C = 8  # the test VAE's latent channels
METHODS = ("sd_inpaint", "paint_by_example", "mimicbrush", "magic_fixup", "magdiff")


@pytest.fixture(scope="module")
def parts8(tmp_path_factory) -> str:
    """Untrained foundations in stage 1's layout with an 8-channel VAE (U-Nets sized to it)."""
    from refedit.foundations import save_random_foundations

    unet = to_dict(compose("train", ["paths.output_dir=/tmp/x"]).foundations.unet)
    return str(save_random_foundations(tmp_path_factory.mktemp("parts8"), unet=unet, latent_channels=C))


def _method(root: str, name: str, *extra: str):
    cfg = compose("train", [f"method={name}", f"backbone.root={root}", "backbone.build_foundations=false",
                            "paths.output_dir=/tmp/refedit-latent8", *extra])
    return build_method(cfg.method)


def _batch(name: str, n: int = 2, size: int = 64, frames: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)

    def img(*shape):
        return torch.rand(*shape, generator=g) * 2 - 1

    captions = ["a red star", "a blue circle"][:n]
    if name == "magdiff":
        return {"video": img(n, frames, 3, size, size), "subject": img(n, 3, 48, 40),
                "subject_inplace": img(n, 3, size, size), "caption": captions}
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 16:48, 12:44] = 1
    src = img(n, 3, size, size)
    return {"source": src, "target": img(n, 3, size, size), "mask": mask, "reference": img(n, 3, size, size),
            "coarse": img(n, 3, size, size), "valid": 1 - mask, "depth": torch.rand(n, 1, size, size, generator=g),
            "caption": captions}


#: the U-Nets of each method and their input width for latent width c (SD: c = 4)
EXPECTED_IN = {
    "sd_inpaint": {"unet": 2 * C + 1},                          # latent, mask, masked latent
    "paint_by_example": {"unet": 2 * C + 1},                    # latent, masked latent, keep mask
    "mimicbrush": {"unet": 3 * C + 1, "reference_unet": C},     # + depth feature; reference: the latent
    "magic_fixup": {"synthesizer": 2 * C + 1, "extractor": 2 * C + 1},
    "magdiff": {"unet": C + 3 * C},                             # latent + 3 HFA scales x hfa_channels (= c)
}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_samples_with_an_8_channel_vae(parts8, name):
    torch.manual_seed(0)
    extra = ["method.num_frames=2", "method.image_tokens.depth=1", "method.image_tokens.heads=2",
             "method.image_tokens.dim_head=16"] if name == "magdiff" else []
    m = _method(parts8, name, *extra)
    assert m.codec.latent_channels == C
    for attr, want in EXPECTED_IN[name].items():
        unet = getattr(m, attr)
        assert (unet.config.in_channels, unet.conv_in.in_channels, unet.config.out_channels) == (want, want, C), attr
    if hasattr(m, "layout"):
        assert m.layout.latent_channels == C and m.layout.in_channels == EXPECTED_IN[name]["unet"]

    b = _batch(name)
    m.train()
    loss = m.training_step(b, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.trainable_parameters())
    m.zero_grad()
    m.eval()

    g = torch.Generator().manual_seed(0)
    out = m.sample(b, num_steps=2, generator=g)
    want = b["video"].shape if name == "magdiff" else b["source"].shape
    assert out.shape == want and torch.isfinite(out).all()
    z = m.sample(b, num_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert z.shape[1] == C


def test_pbe_reuses_8_channel_inpainting_weights_permuted(parts8):
    """SD-inpainting's conv_in [latent, mask, masked latent] is moved to PbE's [latent, masked latent, keep] by
    the layouts' slices, whatever the latent width."""
    from diffusers import UNet2DConditionModel

    m = _method(parts8, "paint_by_example", "method.unet_init=inpainting")
    src = UNet2DConditionModel.from_pretrained(f"{parts8}/toy-sd-inpainting", subfolder="unet").conv_in
    w, w0 = m.unet.conv_in.weight, src.weight
    assert torch.equal(w[:, :C], w0[:, :C])
    assert torch.equal(w[:, C:2 * C], w0[:, C + 1:])
    assert torch.equal(w[:, 2 * C:], -w0[:, C:C + 1])
    assert torch.allclose(m.unet.conv_in.bias, src.bias + w0[:, C].sum(dim=(-1, -2)))


def test_a_unet_that_does_not_fit_the_vae_is_refused(parts8, random_parts):
    """An 8-channel VAE with the 4-channel toy U-Nets: the text-to-image one is no leading part of PbE's input;
    the inpainting one (9 in) is, but predicts 4 channels, not the VAE's 8."""
    with pytest.raises(ValueError, match=r"Paint-by-Example U-Net \(latent 8 \+ masked_image 8 \+ keep_mask 1 = 17\)"
                                         r".*this one has 4 input channels"):
        _method(parts8, "paint_by_example", f"backbone.unet.pretrained={random_parts}/toy-sd")
    with pytest.raises(ValueError, match="predicts 4 channels, the VAE's latents have 8"):
        _method(parts8, "sd_inpaint", f"backbone.unet.pretrained_inpaint={random_parts}/toy-sd-inpainting")


# ------------------------------------------------------------------------------ no literal channel counts
def _int_constants(path: Path, values: set[int]) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and type(n.value) is int and n.value in values]


def test_no_literal_inpainting_channel_counts_in_methods_backbone_or_yaml():
    """9 (SD-inpainting) and 13 (MimicBrush) are what a 4-channel VAE gives; written out, they would break
    another VAE silently. Code and YAML values derive them (refedit.backbone.latents)."""
    bad = [hit for sub in ("methods", "backbone") for p in sorted((ROOT / "src/refedit" / sub).glob("*.py"))
           for hit in _int_constants(p, {9, 13})]

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if "channels" in str(k) and v in (9, 13):
                    bad.append(f"{where}: {k}: {v}")
                walk(v, where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    for p in sorted([*(ROOT / "conf/method").glob("*.yaml"), *(ROOT / "conf/backbone").glob("*.yaml")]):
        walk(yaml.safe_load(p.read_text()), p.relative_to(ROOT))
    assert not bad, "literal channel counts (derive them from the VAE's latent_channels):\n" + "\n".join(bad)
