"""Model FLOPs of every method at full size, counted on the meta device (architecture only: no weights,
no memory).

`torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-accumulate of matmuls and
convolutions; on the meta device `scaled_dot_product_attention` runs its math path, so attention is counted
as its two bmm's. Elementwise ops, norms and softmax are not counted (the usual convention; a few % of a
U-Net). Data-dependent branches on dropout/keep masks are taken as "nothing dropped", so every branch is
counted (MimicBrush's sampling step thus includes the reference U-Net for the unconditional half too, which
the real sampler skips: an upper bound).

A training step is measured, not estimated: forward of the method's `diffusion_loss` (frozen VAE/CLIP
encoders included) and its backward, with gradient checkpointing off so that recomputation is not counted
(model FLOPs, the MFU convention). `python -m refedit.flops [method ...]` prints `name: value` lines.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from refedit.utils.config import CONFIG_DIR, compose

#: methods without a conf/experiment/<method>_sd1*.yaml: the overrides that give their full-size setting
REAL_SCALE_FALLBACK: dict[str, list[str]] = {"sd_inpaint": ["backbone=sd15_inpaint"]}

#: steps on CPU arrays (no tensor FLOPs) that cannot see a meta tensor: identity stand-ins while counting
META_STAND_INS: dict[str, Callable[..., Any]] = {
    # Magic Fixup fills the coarse edit's holes with OpenCV (Navier-Stokes) before VAE encoding
    "refedit.data.holes.fill_holes": lambda coarse, *args, **kwargs: coarse,
}


def method_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))


def real_scale_overrides(method: str) -> list[str]:
    """The method's base real-scale experiment (the shortest conf/experiment/<method>_sd1*.yaml name)."""
    found = sorted(
        (p.stem for p in (CONFIG_DIR / "experiment").glob(f"{method}_sd1*.yaml")), key=lambda s: (len(s), s)
    )
    if found:
        return [f"experiment={found[0]}"]
    return [f"method={method}", *REAL_SCALE_FALLBACK.get(method, ["backbone=sd15"])]


def compose_real_scale(method: str, extra: Sequence[str] = ()):
    return compose("train", [*real_scale_overrides(method), "paths.output_dir=/tmp/refedit-flops", *extra])


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


class FixedLengthTokenizer:
    """Stands in for a CLIP tokenizer where no tokenizer files exist (meta / random-init models): every
    caption becomes `model_max_length` token ids, which is all the text encoder's cost depends on."""

    def __init__(self, model_max_length: int = 77):
        self.model_max_length = model_max_length

    def __call__(self, texts, max_length: int | None = None, **_: Any):
        from types import SimpleNamespace

        n = max_length or self.model_max_length
        return SimpleNamespace(input_ids=torch.full((len(list(texts)), n), 0, dtype=torch.long))


def install_tokenizer_stand_ins(model: torch.nn.Module) -> None:
    for mod in model.modules():
        if hasattr(mod, "tokenizer") and mod.tokenizer is None:
            mod.tokenizer = FixedLengthTokenizer()


class _MetaMask(torch.Tensor):
    """A meta bool mask that answers the data-dependent questions methods ask of dropout masks, as if nothing
    were dropped: `tolist()` -> all False, `bool(keep.any())` -> True (so every branch is computed and
    counted). Bool results of ops on it stay `_MetaMask`; everything else comes out a plain tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.bool:
            return out.as_subclass(cls)
        return out

    def tolist(self):
        return [False] * self.shape[0] if self.dim() else False

    def __bool__(self) -> bool:
        return True


def all_on_meta(model: torch.nn.Module) -> None:
    """Everything onto `meta`, the module's `device` too: parts built outside the meta context (CLIP
    normalisation constants, small adapters) and the masks methods draw on `self.device` then match."""
    model.to("meta")
    model._device = torch.device("meta")
    model.drop_mask = lambda n, p=None: torch.zeros(n, dtype=torch.bool, device="meta").as_subclass(_MetaMask)


@contextlib.contextmanager
def meta_stand_ins() -> Iterator[None]:
    import importlib
    from unittest import mock

    from torch.fx.experimental import _config as fx_config

    with contextlib.ExitStack() as stack:
        # boolean indexing by a keep-mask on meta: assume every element kept (the dropout-free cost)
        stack.enter_context(mock.patch.object(fx_config, "meta_nonzero_assume_all_nonzero", True))
        for target, fn in META_STAND_INS.items():
            mod, _, attr = target.rpartition(".")
            try:
                importlib.import_module(mod)
            except ImportError:
                continue
            stack.enter_context(mock.patch(target, fn))
        yield


def shaped_batch(
    cfg, batch_size: int = 1, device: str | torch.device = "meta", dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """A batch with the keys of the method's toyworld task and the shapes of the config's resolution/frames
    (zeros; on `meta` it holds no memory). Masks stay {0,1}: all zeros except a centred square."""
    from refedit.batch import collate_edit
    from refedit.data.toyworld import build_sample

    res = int(cfg.backbone.resolution)
    frames = cfg.data.get("frames") or 8
    sample = build_sample(cfg.method.task, 0, size=64, frames=int(frames))
    small = collate_edit([sample] * batch_size)
    out: dict[str, Any] = {}
    for k, v in small.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 3 and v.is_floating_point():
            shape = list(v.shape)
            shape[-2], shape[-1] = shape[-2] * res // 64, shape[-1] * res // 64
            t = torch.zeros(shape, device=device, dtype=dtype or v.dtype)
            if k in ("mask", "valid", "reference_mask") and t.device.type != "meta":
                t[..., res // 4 : 3 * res // 4, res // 4 : 3 * res // 4] = 1
            out[k] = t
        else:
            out[k] = v
    return out


@contextlib.contextmanager
def _tally(model: torch.nn.Module, attr: str, counter: FlopCounterMode, spent: list[int]) -> Iterator[None]:
    """Count the FLOPs spent inside `model.<attr>` while `counter` runs."""
    orig = getattr(model, attr)

    def wrapped(*args, **kwargs):
        before = counter.get_total_flops()
        out = orig(*args, **kwargs)
        spent[0] += counter.get_total_flops() - before
        return out

    setattr(model, attr, wrapped)
    try:
        yield
    finally:
        delattr(model, attr)


@dataclass
class MethodFlops:
    """FLOPs per sample (one image, or one clip for video methods)."""

    name: str
    overrides: list[str]
    resolution: int
    frames: int | None
    train_forward: int  # diffusion_loss forward: frozen encoders + denoise
    train_denoise: int  # of which the denoise call (the trained network(s))
    train_backward: int
    sample_step: int  # one sampling step: denoise with the CFG branches of the method's sampling config
    sample_fixed: int  # once per sample: conditions (encoders, reference pass) + decode
    params_total: int
    params_trainable: int

    @property
    def train(self) -> int:
        return self.train_forward + self.train_backward


def build_meta_method(method: str, extra: Sequence[str] = ()):
    from refedit.utils.config import build_method

    cfg = compose_real_scale(method, ["backbone.gradient_checkpointing=false", *extra])
    model = build_method(cfg.method, meta=True)
    install_tokenizer_stand_ins(model)
    all_on_meta(model)
    return cfg, model


def method_flops(method: str, batch_size: int = 1, extra: Sequence[str] = ()) -> MethodFlops:
    """FLOPs per sample of `method` in its real-scale setting (+ `extra` overrides, e.g.
    backbone.resolution)."""
    with meta_stand_ins():
        return _method_flops(method, batch_size, extra)


def _method_flops(method: str, batch_size: int, extra: Sequence[str]) -> MethodFlops:
    from refedit.backbone.sampler import CFGGuider

    cfg, m = build_meta_method(method, extra)
    batch = shaped_batch(cfg, batch_size)
    torch.manual_seed(0)
    m.train()
    den = [0]
    with FlopCounterMode(display=False) as fc, _tally(m, "denoise", fc, den):
        loss = m.diffusion_loss(batch)
    fwd = int(fc.get_total_flops())
    bwd = count_flops(loss.backward)
    m.eval()
    with torch.no_grad():
        conds: list[Any] = []
        fixed = count_flops(lambda: conds.extend(m.conditions(batch, train=False)))
        # masks inside the conditions (e.g. MimicBrush's reference keep-mask) count as all-kept: an upper
        # bound
        cond, uncond = (
            None
            if c is None
            else {
                k: v.as_subclass(_MetaMask) if isinstance(v, torch.Tensor) and v.dtype == torch.bool else v
                for k, v in c.items()
            }
            for c in conds
        )
        z = torch.zeros(m.latent_shape(batch), device="meta")
        t = torch.tensor(500)
        step = count_flops(lambda: CFGGuider(m.sampling_cfg["guidance_scale"])(m.denoise, z, t, cond, uncond))
        fixed += count_flops(lambda: m.decode(z, batch))
    frames = (
        cfg.data.get("frames")
        if any(v.dim() == 5 for v in batch.values() if isinstance(v, torch.Tensor))
        else None
    )
    return MethodFlops(
        method,
        [*real_scale_overrides(method), *extra],
        int(cfg.backbone.resolution),
        int(frames) if frames else None,
        fwd // batch_size,
        den[0] // batch_size,
        bwd // batch_size,
        step // batch_size,
        fixed // batch_size,
        sum(p.numel() for p in m.parameters()),
        sum(p.numel() for p in m.trainable_parameters()),
    )


def unet_forward_flops(
    backbone: str = "sd15", latent_size: int = 64, batch_size: int = 1, tokens: int = 77
) -> int:
    """One U-Net forward of a backbone (SD-1.5: 512 px = 64x64 latent, 77 CLIP tokens)."""
    from refedit.backbone.unet import build_unet
    from refedit.utils.config import to_dict

    bb = to_dict(compose("train", [f"backbone={backbone}", "paths.output_dir=/tmp/refedit-flops"]).backbone)
    unet = build_unet(bb["unet"], meta=True)
    c = unet.config
    z = torch.zeros(batch_size, c.in_channels, latent_size, latent_size, device="meta")
    ctx = torch.zeros(batch_size, tokens, c.cross_attention_dim, device="meta")
    with torch.no_grad():
        return count_flops(
            lambda: unet(
                z, torch.zeros(batch_size, dtype=torch.long, device="meta"), encoder_hidden_states=ctx
            )
        )


def report(methods: Sequence[str] | None = None, out=sys.stdout) -> dict[str, MethodFlops]:
    """Print `name: value` lines (TFLOP); a method that cannot be built prints `<name>_error: ...`."""
    print(f"sd15_unet_fwd_tflop: {unet_forward_flops() / 1e12:.4f}", file=out, flush=True)
    results: dict[str, MethodFlops] = {}
    for name in methods or method_names():
        try:
            r = method_flops(name)
        except Exception as e:  # noqa: BLE001 - a broken method must not hide the others' numbers
            print(
                f"{name}_error: flops: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                file=out,
                flush=True,
            )
            continue
        results[name] = r
        size = f"{r.resolution}px" + (f"x{r.frames}f" if r.frames else "")
        print(f"flops_setting_{name}: {' '.join(r.overrides)} ({size}, batch 1)", file=out)
        print(f"flops_train_tflop_per_sample_{name}: {r.train / 1e12:.3f}", file=out)
        print(f"flops_train_denoise_fwd_tflop_{name}: {r.train_denoise / 1e12:.3f}", file=out)
        print(f"flops_sample_step_tflop_{name}: {r.sample_step / 1e12:.3f}", file=out)
        print(f"flops_sample_fixed_tflop_{name}: {r.sample_fixed / 1e12:.3f}", file=out, flush=True)
    return results


if __name__ == "__main__":
    report(sys.argv[1:] or None)
