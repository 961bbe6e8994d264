"""MagDiff: inflation equals the image U-Net at init, APA reduces to text cross-attention, the trainable set, HFA on
any subject size, generation / editing shapes, the frame-consistency metric, full-size configs on meta."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from conftest import tiny_backbone
from numerics import FORWARD_REL, assert_close_rel
from refedit.eval.video_metrics import frame_consistency
from refedit.methods.magdiff import MagDiff
from refedit.methods.magdiff_parts import (
    APAProcessor,
    HFAPyramid,
    inflate_unet,
    letterbox,
    spatial_block_names,
)

F_ = 4  # frames in unit tests


def _batch(n=2, frames=F_, size=64, subject_hw=(48, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(n, frames, 3, size, size, generator=g) * 2 - 1,
            "subject": torch.rand(n, 3, *subject_hw, generator=g) * 2 - 1,
            "subject_inplace": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "caption": ["a red striped star moving left", "a blue circle moving up"][:n]}


def _method(bb, **kw) -> MagDiff:
    kw = {"num_frames": F_, "image_tokens": {"depth": 2, "dim_head": 16, "heads": 4}, **kw}
    return MagDiff(backbone=bb, name="magdiff", **kw)


@pytest.fixture(scope="module")
def model(random_parts):
    torch.manual_seed(0)
    return _method(tiny_backbone(random_parts)).eval()


@pytest.fixture(scope="module")
def pretrained_model(random_parts, image_unet):
    """MagDiff on a saved (pretrained-layout) image U-Net: the paper's trainable set applies."""
    torch.manual_seed(0)
    return _method(tiny_backbone(random_parts, **{"backbone.unet.pretrained": image_unet[1]})).eval()


@pytest.fixture(scope="module")
def image_unet(random_parts, tmp_path_factory):
    """A 4-channel text-to-image U-Net saved in diffusers layout (what SD-1.5 weights look like)."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(**tiny_backbone(random_parts)["unet"]["config"]).eval()
    root = tmp_path_factory.mktemp("t2i")
    unet.save_pretrained(root / "unet")
    return unet, str(root)


def _per_frame_2d(unet2d, x, t, context):
    """The image U-Net applied frame by frame: x (N,C,F,h,w), context (N*F, L, D) -> (N,4,F,h,w)."""
    n, _, f = x.shape[:3]
    out = unet2d(x.transpose(1, 2).flatten(0, 1), t, encoder_hidden_states=context).sample
    return out.view(n, f, *out.shape[1:]).transpose(1, 2)


def test_inflated_unet_equals_image_unet_frame_by_frame(image_unet):
    unet2d, _ = image_unet
    video = inflate_unet(unet2d, num_attention_heads=8, max_frames=32).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, F_, 16, 16, generator=g)
    ctx = torch.randn(2 * F_, 77, unet2d.config.cross_attention_dim, generator=g)  # a different context per frame
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ref = _per_frame_2d(unet2d, x, t.repeat_interleave(F_), ctx)
        out = video(x, t, encoder_hidden_states=ctx).sample
        assert out.shape == ref.shape
        # frames folded into the batch vs the image U-Net on them: the same layers in another layout
        assert_close_rel(out, ref, rel=FORWARD_REL, what="inflated vs image U-Net")
        # the temporal layers are in the path: a non-zero output projection mixes frames
        mm = video.down_blocks[0].motion_modules[0].proj_out
        mm.weight.normal_(0, 0.1)
        assert (video(x, t, encoder_hidden_states=ctx).sample - ref).abs().max() > 1e-3
        mm.weight.zero_()


def test_method_equals_image_unet_with_image_scalar_zero(image_unet, random_parts):
    """The whole method (HFA widened conv_in, APA on every cross-attention, motion modules) computes the pretrained
    image U-Net frame by frame when a_i = 0: every added part starts as the identity."""
    unet2d, root = image_unet
    m = _method(tiny_backbone(random_parts, **{"backbone.unet.pretrained": root})).eval()
    for p in m.apa.values():
        p.alpha_image.data.zero_()
    b = _batch()
    cond, _ = m.conditions(b, train=False)
    z = torch.randn(2, 4, F_, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor(400)
    with torch.no_grad():
        ours = m.denoise(z, t, cond)
        ref = _per_frame_2d(unet2d, z, t, cond["text"].repeat_interleave(F_, dim=0))
    assert_close_rel(ours, ref, rel=FORWARD_REL, what="method at a_i = 0 vs image U-Net")
    for p in m.apa.values():
        p.alpha_image.data.fill_(1.5)
    with torch.no_grad():
        assert (m.denoise(z, t, cond) - ref).abs().max() > 1e-4  # the subject tokens do reach the U-Net


def test_apa_with_image_scalar_zero_is_text_cross_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8)
    proc = APAProcessor(attn, num_text_tokens=77, alpha_image=0.0)
    assert proc.copied_init and torch.equal(proc.to_k_img.weight, attn.to_k.weight)
    hidden, text, image = torch.randn(3, 50, 32), torch.randn(3, 77, 24), torch.randn(3, 16, 24)
    ref = AttnProcessor2_0()(attn, hidden, text)
    out = proc(attn, hidden, torch.cat([text, image], dim=1))
    assert_close_rel(out, ref, rel=FORWARD_REL, what="APA at a_i = 0 vs diffusers' processor")  # one layer, two codes
    proc.alpha_image.data.fill_(1.5)
    assert (proc(attn, hidden, torch.cat([text, image], dim=1)) - ref).abs().max() > 1e-3
    # any number of image tokens after the text (16 per frame image x F frames in the release's context)
    four = torch.randn(3, 64, 24)
    proc.alpha_image.data.zero_()
    assert torch.allclose(proc(attn, hidden, torch.cat([text, four], dim=1)), ref, atol=1e-6)
    with pytest.raises(ValueError, match="image tokens"):
        proc(attn, hidden, text)  # image tokens missing


def test_apa_is_on_every_spatial_cross_attention_only(model):
    blocks = spatial_block_names(model.unet)
    assert len(model.apa) == len(blocks) > 0
    procs = model.unet.attn_processors
    for name, proc in procs.items():
        is_apa = isinstance(proc, APAProcessor)
        assert is_apa == (".attentions." in name and name.endswith("attn2.processor")), name
    p = next(iter(model.apa.values()))
    assert p.alpha_text.item() == 1.0 and p.alpha_image.item() == 1.5
    keys = model.state_dict().keys()  # trainable processors are submodules: they checkpoint
    assert sum(k.endswith("attn2.processor.to_k_img.weight") for k in keys) == len(blocks)


SPEC_TRAINABLE = [
    r"unet\.(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\..*",  # temporal layers
    r"unet\.(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\..*",  # spatial transformers (+ APA K/V, alphas)
    r"unet\.conv_in\..*",
    r"resampler\..*",
    r"hfa\..*",
]


def test_trainable_set_is_the_spec(pretrained_model):
    model = pretrained_model
    assert not model.train_whole_unet
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if any(re.fullmatch(r, n) for r in SPEC_TRAINABLE)}
    assert names == expected
    for part in ("processor.to_k_img", "processor.to_v_img", "processor.alpha_text", "processor.alpha_image",
                 "motion_modules", "resampler.", "hfa.convs", "conv_in"):
        assert any(part in n for n in names), part
    for frozen in ("resnets", "codec.", "text_encoder.", "image_encoder.", "conv_out", "time_embedding"):
        assert not any(frozen in n for n in names), frozen
    ids = {id(p) for p in model.trainable_parameters()}
    assert ids == {id(p) for n, p in model.named_parameters() if n in names}
    # gradients reach the subject branch (resampler, HFA convs via the widened conv_in, APA image K/V)
    model.train()
    with torch.no_grad():
        model.unet.conv_in.weight[:, 4:].normal_(0, 0.05)
    try:
        model.diffusion_loss(_batch()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert set(grads) <= names
        for part in ("resampler.proj_in.weight", "hfa.convs.0.weight", "attn2.processor.to_v_img.weight",
                     "attn2.processor.alpha_image", "motion_modules.0.proj_out.weight"):
            assert any(part in n and g.abs().sum() > 0 for n, g in grads.items()), part
    finally:
        with torch.no_grad():
            model.unet.conv_in.weight[:, 4:].zero_()
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("hw", [(40, 56), (64, 64), (100, 80)])
def test_hfa_accepts_any_subject_size(model, hw):
    subject = torch.rand(2, 3, *hw) * 2 - 1
    out = model.hfa_latents(subject, (16, 16))
    assert out.shape == (2, 12, 16, 16)
    assert model.hfa.pixel_sizes((16, 16), model.codec.downsample) == [(96, 96), (80, 80), (64, 64)]
    enc = lambda x: model.codec.encode(x, sample=False)  # noqa: E731
    for fit in ("resize", "letterbox"):  # in-place frames are stretched to each scale, cropped subjects letterboxed
        single = HFAPyramid("single", fit=fit)
        assert single(subject, (16, 16), model.codec.downsample, enc).shape == (2, 4, 16, 16)
    assert letterbox(subject, (32, 32)).shape[-2:] == (32, 32)


def test_single_scale_hfa_is_the_release_layout(random_parts):
    m = _method(tiny_backbone(random_parts), hfa="single")
    assert m.unet.config.in_channels == 8 and m.hfa.convs is None
    with pytest.raises(ValueError, match="method.hfa"):
        _method(tiny_backbone(random_parts), hfa="triple")


def test_subject_frames_first_and_cfg_on_text_only(model):
    b = _batch()
    cond, uncond = model.conditions(b, train=False)
    img, hfa = cond["image"], cond["hfa"]
    assert img.shape == (2, F_, 16 * F_, 64) and hfa.shape == (2, F_, 12, 16, 16)
    assert torch.equal(img[:, 0], img[:, 3])  # image_context=all_frames: one context for every frame
    assert not torch.allclose(hfa[:, 0], hfa[:, 1])  # HFA: frame 0 = subject, other frames = the blank image
    assert torch.equal(hfa[0, 1:], hfa[1, 1:]) and torch.equal(hfa[0, 1], hfa[0, 3])
    assert not torch.allclose(img[0, 0, :16], img[1, 0, :16])  # the subjects' tokens differ, the blank's do not
    assert torch.equal(img[0, 0, 16:], img[1, 0, 16:])
    assert torch.equal(uncond["image"], img) and torch.equal(uncond["hfa"], hfa)  # negative = empty text only
    assert not torch.allclose(uncond["text"], cond["text"])
    model.image_context = "per_frame"
    try:
        c_pf, _ = model.conditions(b, train=False)
        assert c_pf["image"].shape == (2, F_, 16, 64)
        assert torch.equal(c_pf["image"][:, 0], img[:, 0, :16]) and torch.equal(c_pf["image"][:, 1], img[:, 0, 16:32])
        model.subject_frames = "all"
        c_all, _ = model.conditions(b, train=False)
        assert torch.equal(c_all["image"][:, 0], c_all["image"][:, 3])  # one subject's tokens, repeated
    finally:
        model.subject_frames, model.image_context = "first", "all_frames"


def _apa_contexts(model, batch):
    """The encoder_hidden_states every APA cross-attention receives in one denoiser call: {block: (N*F, L, D)}."""
    seen, hooks = {}, []
    for name in model.apa:
        attn = model.unet.get_submodule(f"{name}.attn2")
        hooks.append(attn.register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: seen.__setitem__(name, kwargs["encoder_hidden_states"]),
            with_kwargs=True))
    try:
        cond, _ = model.conditions(batch, train=False)
        with torch.no_grad():
            out = model.denoise(torch.randn(2, 4, F_, 16, 16, generator=torch.Generator().manual_seed(0)),
                                torch.tensor(500), cond)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def test_every_frame_attends_to_the_subject_tokens(model):
    """Release scheme (image_context=all_frames, subject_frames=first): the tokens of all F frame images, the
    subject's first, are one context that every frame's APA cross-attention receives, so the identity reaches
    frames 1..F-1 through APA. The motion modules are the identity at init and HFA's conv_in channels are zero,
    so APA is the only path by which the subject can change frames 1..F-1."""
    b = _batch()
    subject_tokens = model.subject_tokens(b["subject"])  # (N, 16, D)
    blank_tokens = model.subject_tokens(torch.full_like(b["subject"][:1], -1.0))
    n_text = model.conditions(b, train=False)[0]["text"].shape[1]
    seen, out = _apa_contexts(model, b)
    assert len(seen) == len(model.apa)
    for name, ctx in seen.items():
        image = ctx[:, n_text:].reshape(2, F_, -1, 16, ctx.shape[-1])  # (N, frame attending, frame image, token, D)
        assert image.shape[2] == F_, name  # the tokens of all F frame images, in frame order
        for f in range(F_):
            assert torch.allclose(image[:, f, 0], subject_tokens, atol=1e-5), (name, f)
            assert torch.allclose(image[:, f, 1:], blank_tokens.expand_as(image[:, f, 1:]), atol=1e-5), (name, f)
    other = dict(b, subject=torch.flip(b["subject"], dims=[-1]), subject_inplace=b["subject_inplace"])
    _, out2 = _apa_contexts(model, other)
    for f in range(F_):
        assert (out[:, :, f] - out2[:, :, f]).abs().max() > 1e-4, f  # every frame's prediction sees the subject
    model.image_context = "per_frame"  # the other scheme: frames 1..F-1 see only the blank image's tokens
    try:
        a, b2 = _apa_contexts(model, b)[1], _apa_contexts(model, other)[1]
    finally:
        model.image_context = "all_frames"
    assert (a[:, :, 0] - b2[:, :, 0]).abs().max() > 1e-4 and torch.equal(a[:, :, 1:], b2[:, :, 1:])


def test_blank_frames_are_black(model):
    """Frames other than the first get a black image (the release zeroes their 8-bit pixels), for CLIP and HFA."""
    b = _batch()
    black = torch.full_like(b["subject"][:1], -1.0)
    black_frame = torch.full_like(b["subject_inplace"][:1], -1.0)
    with torch.no_grad():
        cond, _ = model.conditions(b, train=False)
        want_hfa = model.hfa_latents(black_frame, (16, 16))[0]
        want_tok = model.subject_tokens(black)[0]
        grey = model.hfa_latents(torch.zeros_like(black_frame), (16, 16))[0]
    scale = want_hfa.abs().max()
    for f in range(1, F_):  # the same ops on a batch of another size: round-off of the convolutions only
        assert torch.allclose(cond["hfa"][:, f], want_hfa.expand_as(cond["hfa"][:, f]), atol=1e-5 * float(scale))
    assert torch.allclose(cond["image"][:, 0, 16:32], want_tok.expand(2, -1, -1), atol=1e-5 * float(want_tok.abs().max()))
    assert (cond["hfa"][:, 1] - grey).abs().max() > 1e-3  # not the mid-grey zero tensor


def test_hfa_latent_of_the_inplace_subject_is_aligned_with_frame_0(random_parts, model):
    """hfa_input=inplace (release): HFA encodes frame 0 with only the subject kept, so its latent is the frame's own
    latent wherever the subject is: with a frame that is just the subject on black, HFA's latent for frame 0 is
    exactly the VAE latent of frame 0 (single scale); every pyramid scale, pooled back, peaks where the subject
    is."""
    m = _method(tiny_backbone(random_parts), hfa="single").eval()
    b = _batch()
    frame0 = torch.full_like(b["subject_inplace"], -1.0)
    frame0[:, :, 8:24, 40:56] = b["subject_inplace"][:, :, 8:24, 40:56]  # a subject in the top-right corner
    b["video"][:, 0] = frame0
    b["subject_inplace"] = frame0
    b["subject"] = frame0[:, :, 8:24, 40:56]  # the cropped subject (what hfa_input=crop would encode)
    cond, _ = m.conditions(b, train=False)
    z0 = m.codec.encode(b["video"][:, 0], sample=False)
    assert torch.allclose(cond["hfa"][:, 0], z0, atol=1e-5 * float(z0.abs().max()))
    enc = lambda x: model.codec.encode(x, sample=False)  # noqa: E731
    d = model.codec.downsample
    empty = model.hfa.scale_latents(torch.full_like(frame0, -1.0), (16, 16), d, enc)
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[8 // d:24 // d, 40 // d:56 // d] = True  # the subject's latent pixels
    near = torch.zeros_like(box)
    near[8 // d - 1:24 // d + 1, 40 // d - 1:56 // d + 1] = True
    for i, z in enumerate(model.hfa.scale_latents(frame0, (16, 16), d, enc)):
        # where the latent differs from an empty frame's (a random VAE's norms and mid attention spread a little
        # of it everywhere): most strongly on the subject, at every scale
        diff = (z - empty[i]).abs().sum(1)  # (N, 16, 16)
        for k in range(diff.shape[0]):
            peak = divmod(int(diff[k].argmax()), 16)
            assert near[peak], (model.hfa.scales[i], k, peak)
            assert diff[k][box].mean() > 2 * diff[k][~near].mean(), (model.hfa.scales[i], k)


def test_random_unet_trains_whole_and_says_so(random_parts, caplog):
    """backbone.unet.pretrained=null: a frozen random resnet skeleton cannot learn, so the whole U-Net trains."""
    with caplog.at_level("WARNING", logger="refedit.methods.magdiff"):
        m = _method(tiny_backbone(random_parts, **{"backbone.unet.pretrained": "null"}))
    trainable = {id(p) for p in m.trainable_parameters()}
    assert all(id(p) in trainable and p.requires_grad for p in m.unet.parameters())
    assert m.train_whole_unet and "training the whole U-Net" in caplog.text
    for part in ("resnets", "conv_out", "time_embedding"):
        assert any(part in n and p.requires_grad for n, p in m.unet.named_parameters()), part
    assert not any(p.requires_grad for n, p in m.named_parameters() if n.startswith(("codec.", "text_encoder.",
                                                                                     "image_encoder.")))
    prior = _method(tiny_backbone(random_parts))  # from the toy SD prior: the paper's parts only
    assert not prior.train_whole_unet
    assert not any(p.requires_grad for n, p in prior.unet.named_parameters() if ".resnets." in n)


def test_generation_from_subject_alone_and_sdedit_editing(model):
    b = _batch()
    alone = {k: b[k] for k in ("subject", "subject_inplace", "caption")}
    gen = model.sample(alone, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert gen.shape == (2, F_, 3, 64, 64)
    assert model.latent_shape({"subject": b["subject"]}) == (2, 4, F_, 16, 16)
    six = _batch(frames=6)
    edit = model.sample(six, num_steps=4, strength=0.5, generator=torch.Generator().manual_seed(0))
    assert edit.shape == (2, 6, 3, 64, 64)
    with pytest.raises(ValueError, match="source clip"):
        model.sample(alone, num_steps=4, strength=0.5)
    with pytest.raises(KeyError, match="subject_inplace.*hfa_input=crop"):  # HFA's input, named with the way out
        model.sample({"subject": b["subject"], "caption": b["caption"]}, num_steps=2)
    grid = model.log_images(b, n=2, num_steps=2)
    assert grid["video"].shape == (2, F_, 3, 64, 64) and grid["grid"].dim() == 3


def test_frame_consistency():
    feat = lambda x: x.flatten(1)  # noqa: E731
    static = torch.rand(1, 1, 3, 8, 8).expand(2, 5, 3, 8, 8) * 2 - 1
    assert torch.allclose(frame_consistency(static, feat), torch.full((2,), 100.0))
    flip = torch.stack([static[0, 0], -static[0, 0]])[None]  # opposite features -> -100
    assert torch.allclose(frame_consistency(flip, feat), torch.tensor([-100.0]))
    noisy = torch.rand(3, 6, 3, 8, 8) * 2 - 1
    fc = frame_consistency(noisy, feat)
    assert fc.shape == (3,) and (fc < 100).all()
    assert torch.isnan(frame_consistency(noisy[:, :1], feat)).all()


@pytest.mark.parametrize("exp,res", [("magdiff_sd15", 256), ("magdiff_sd15_512", 512)])
def test_real_scale_configs_on_meta(exp, res):
    from refedit.utils.config import build_method, compose

    cfg = compose("train", [f"experiment={exp}"])
    assert cfg.backbone.name == "sd15" and cfg.backbone.resolution == res and cfg.data.frames == 16
    m = build_method(cfg.method, meta=True)
    counts = m.parameter_counts()
    print(exp, counts)
    assert m.unet.config.in_channels == 4 + 12 and m.num_frames == 16
    assert len(m.apa) == 16 and m.resampler.latents.shape == (1, 16, 768) and len(m.resampler.layers) == 4
    assert abs(counts["unet"] - counts["temporal"] - counts["apa_image_kv"] - 859.52e6) / 859.52e6 < 1e-3
    assert 4.5e8 < counts["temporal"] < 4.6e8  # AnimateDiff v1.5-v2 motion modules: 453M


def test_logged_clips_are_gifs_without_moviepy():
    """The image logger hands W&B a Pillow-encoded GIF (wandb would need moviepy + imageio for raw frames)."""
    import wandb
    from PIL import Image

    from refedit.utils.video import gif_bytes

    clip = torch.rand(F_, 3, 16, 24)
    buf = gif_bytes(clip)
    with Image.open(buf) as im:
        assert im.format == "GIF" and im.n_frames == F_ and im.size == (24, 16)
    buf.seek(0)
    assert wandb.Video(buf, format="gif")._format == "gif"
