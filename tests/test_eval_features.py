from __future__ import annotations

import json

import pytest
import torch

from numerics import EPS, FORWARD_REL, assert_close_rel
from refedit.eval.features import (
    ClipFeatures,
    DinoFeatures,
    InceptionFeatures,
    ObjectLocator,
    ToyworldProbe,
    build_feature_extractor,
    square_crops,
)
from refedit.eval.metrics import identity_score


def _imgs(n=3, size=40, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------------------------- probe
def test_probe_forward_shapes_and_reload_identical(tmp_path):
    torch.manual_seed(0)
    probe = ToyworldProbe()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the reload check covers buffers too
        for mod in probe.modules():
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    x = _imgs(5, 48)
    f = probe(x)
    assert f.shape == (5, probe.dim) == (5, 128) and f.dtype == torch.float32 and not f.requires_grad
    assert probe(_imgs(2, 20)).shape == (2, 128)  # any input size
    logits = probe.logits(x)
    assert {k: v.shape[-1] for k, v in logits.items()} == {"shape": 8, "colour": 8, "pattern": 4}
    probe.save(tmp_path / "p", {"heldout_accuracy": {"shape": 1.0}})
    again = ToyworldProbe.load(tmp_path / "p")
    assert torch.equal(again(x), f)
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["heldout_accuracy"] == {"shape": 1.0}
    assert torch.equal(build_feature_extractor("probe", path=str(tmp_path / "p"))(x), f)
    # the metrics take the probe as feature_fn
    mask = torch.zeros(5, 1, 48, 48)
    mask[..., 10:30, 12:40] = 1
    # the cosine of a feature with itself: a float32 dot product over D terms, at most D EPS off 1
    assert_close_rel(identity_score(x, x, mask, mask, probe), torch.ones(5), rel=probe.dim * EPS, what="cosine")


def test_square_crops_and_locator_roundtrip(tmp_path):
    """square_crops cuts each box's square window (margin included) and resizes it; a saved locator reloads
    bit-identically and crops the largest found region."""
    img = torch.full((2, 3, 64, 64), -1.0)
    img[:, :, 10:30, 30:50] = 1.0  # a 20 x 20 white box
    crops = square_crops(img, [(30, 10, 50, 30), None], 16, margin=0.0)
    assert crops.shape == (2, 3, 16, 16)
    # box 0: its window is the box plus 1 px each side (white inside, 22 px side); None: the whole frame
    assert crops[0].mean() > 0.6 and abs(float(crops[1].mean()) - (-1 + 2 * 400 / 64**2)) < 0.05
    torch.manual_seed(0)
    loc = ObjectLocator()
    loc.save(tmp_path / "loc")
    again = ObjectLocator.load(tmp_path / "loc")
    assert torch.equal(again(img), loc(img))
    out, found = again.crop_largest(img, 24)
    assert out.shape == (2, 3, 24, 24) and found.shape == (2,) and found.dtype == torch.bool


@pytest.mark.slow
def test_probe_heldout_accuracy_at_least_95(tmp_path):
    """The stage-1 probe recipe (foundations.probe) at its default budget: >= 0.95 held-out on every attribute."""
    from refedit.foundations import FoundationsConfig
    from refedit.foundations.data import SEEDS, object_crops
    from refedit.foundations.probe import PROBE_IMAGE_SIZE, evaluate_probe, train_probe

    cfg = FoundationsConfig()
    crops = object_crops(SEEDS["probe"], cfg.probe_images, PROBE_IMAGE_SIZE, "probe crops")
    probe = train_probe(crops, cfg, torch.device("cpu"))
    info = evaluate_probe(probe, object_crops(SEEDS["probe_heldout"], 500, PROBE_IMAGE_SIZE, "held-out"))
    print("probe held-out accuracy", info)
    assert all(v >= 0.95 for v in info["heldout_accuracy"].values()), info
    assert probe.dim == 128


# ---------------------------------------------------------------------------- pretrained (tiny, random)
def _tiny_clip_config(image_size=32):
    from transformers import CLIPConfig

    return CLIPConfig(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=37,
                                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                       bos_token_id=0, eos_token_id=1, pad_token_id=1),
                      vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=image_size, patch_size=8),
                      projection_dim=16)


def test_clip_features_from_clipmodel_dir(tmp_path):
    from transformers import CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(_tiny_clip_config()).eval()
    model.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    feats = build_feature_extractor("clip", str(tmp_path / "clip"))
    assert isinstance(feats, ClipFeatures) and feats.dim == 16 and feats.image_size == 32
    x = _imgs(3, 32)
    f = feats(x)
    assert f.shape == (3, 16)
    assert_close_rel(f.norm(dim=-1), torch.ones(3), rel=feats.dim * EPS, what="norm")  # D squares summed
    with torch.no_grad():  # the same embedding as transformers' own path (mean/std 0.5: pixels = x)
        ref = model.get_image_features(pixel_values=x)
        ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    # our [-1, 1] -> CLIP-normalised pixels vs the same pixels given directly: a rounding per pixel, one forward
    assert_close_rel(f, torch.nn.functional.normalize(ref, dim=-1), rel=FORWARD_REL, what="CLIP features")
    assert feats(_imgs(2, 64)).shape == (2, 16)  # resized to the model's 32 px


def test_clip_features_from_vision_dir_and_foundations_layout(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                            image_size=32, patch_size=8, projection_dim=12)
    vm = CLIPVisionModelWithProjection(vcfg)
    vm.save_pretrained(tmp_path / "root" / "image_encoder")
    a = ClipFeatures(tmp_path / "root" / "image_encoder")
    b = ClipFeatures(tmp_path / "root")  # diffusers-style root: uses image_encoder/
    x = _imgs(2, 32)
    assert a.dim == 12 and torch.equal(a(x), b(x))


def test_dino_features(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, image_size=28, patch_size=14)).eval()
    model.save_pretrained(tmp_path / "dino")
    (tmp_path / "dino" / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 28, "width": 28}, "image_mean": [0.485, 0.456, 0.406],
         "image_std": [0.229, 0.224, 0.225]}))
    feats = build_feature_extractor("dino", str(tmp_path / "dino"))
    assert isinstance(feats, DinoFeatures) and feats.dim == 32 and feats.image_size == 28
    x = _imgs(3, 28)
    f = feats(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(pixel_values=((x + 1) / 2 - mean) / std).pooler_output
    assert f.shape == (3, 32)
    assert_close_rel(f, ref, rel=FORWARD_REL, what="DINO features")  # normalisation written twice, one forward


class _ScriptedInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 6)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = self.proj(x.mean(dim=(2, 3)) / 255.0)
        return f if return_features else f.softmax(-1)


def test_inception_features_from_torchscript(tmp_path):
    torch.jit.save(torch.jit.script(_ScriptedInception()), str(tmp_path / "inception.pt"))
    feats = build_feature_extractor("inception", str(tmp_path / "inception.pt"))
    assert isinstance(feats, InceptionFeatures) and feats.dim == 6
    x = _imgs(2, 16)
    mod = torch.jit.load(str(tmp_path / "inception.pt"))
    assert_close_rel(feats(x), mod((x + 1) * 127.5, return_features=True), rel=FORWARD_REL, what="Inception")


def test_missing_weights_name_the_option(tmp_path):
    for name in ("clip", "dino", "inception"):
        with pytest.raises(FileNotFoundError, match=f"'{name}'"):
            build_feature_extractor(name, None)
    with pytest.raises(FileNotFoundError, match="'clip'"):
        build_feature_extractor("clip", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="valid: probe, clip, dino, inception"):
        build_feature_extractor("lpips", None)
    with pytest.raises(ValueError, match="cache_dir"):
        build_feature_extractor("probe", None, None)
    with pytest.raises(FileNotFoundError, match="ensure_foundations"):
        ToyworldProbe.load(tmp_path)
