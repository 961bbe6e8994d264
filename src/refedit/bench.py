"""Speed and FLOP benchmarks: `make bench` = `python -m refedit.bench [--only loop,data,sampler,flops,gpu]`.

Prints `name: value` lines (times in ms, medians over repeated steps after warm-up). A method that cannot be
built or run prints `<name>_error: ...` and the others go on. CPU numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from refedit.utils.config import build_method, compose, to_dict

SECTIONS = ("loop", "data", "sampler", "flops", "gpu", "pipelines")
#: dense bf16 tensor-core peak FLOP/s by device name fragment (MFU denominators)
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def emit(name: str, value: Any) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{name}: {value}", flush=True)


def _error(name: str, section: str, e: BaseException) -> None:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    emit(f"{name}_error", f"{section}: {type(e).__name__}: {first}")


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -------------------------------------------------------------------------------------- tiny parts
def tiny_parts(workdir: Path) -> str:
    """The cached toyworld foundations when present (the trained toy SD), else saved random parts in their layout."""
    from refedit.foundations import foundations_ready, save_random_foundations

    cfg = compose("train", ["paths.output_dir=/tmp/refedit-bench"])
    cached = Path(str(cfg.paths.foundations_dir))
    if foundations_ready(cached):
        return str(cached)
    return str(save_random_foundations(workdir / "parts", unet=to_dict(cfg.foundations.unet)))


def tiny_cfg(parts: str, out: Path, method: str, *extra: str, smoke: bool = True):
    """The composed training config of a method on the given tiny parts: the smoke preset (its smoke batch
    size) or the default one."""
    return compose(
        "train",
        [
            f"method={method}",
            *(["experiment=smoke"] if smoke else []),
            f"backbone.root={parts}",
            "backbone.build_foundations=false",
            f"paths.output_dir={out}",
            *extra,
        ],
    )


def method_batches(cfg, n: int, start: int = 0) -> list[dict[str, Any]]:
    """`n` training batches from the composed data config (the real pipeline: dataset + collate)."""
    from refedit.batch import collate_edit
    from refedit.data.datamodule import build_datamodule

    dm = build_datamodule(cfg.data)
    dm.setup("fit")
    bs = dm.batch_size
    return [collate_edit([dm.train_set[start + i * bs + j] for j in range(bs)]) for i in range(n)]


def _optimizers(model) -> tuple[torch.optim.Optimizer, Any]:
    opt = model.configure_optimizers()
    if isinstance(opt, dict):
        return opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    return opt, None


def bare_step_fn(
    model, clip: float | None = 1.0, autocast: torch.dtype | None = None, ema_decay: float | None = None
) -> Callable[[dict[str, Any]], float]:
    """One plain-PyTorch training step: the same loss, optimiser, scheduler and clipping as the trainer
    (`autocast`: mixed-precision forward, as Lightning's `bf16-mixed`; `ema_decay`: the same weight averaging
    as the EMA callback, which a hand-written loop would do too)."""
    opt, sched = _optimizers(model)
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    device_type = next(iter(params)).device.type
    shadows = [p.detach().clone() for p in params] if ema_decay else None
    model.train()

    def step(batch: dict[str, Any]) -> float:
        with torch.autocast(device_type, dtype=autocast) if autocast else contextlib.nullcontext():
            loss = model.diffusion_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss in the bare loop")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()
        if shadows is not None:
            with torch.no_grad():
                torch._foreach_lerp_(shadows, [p.detach() for p in params], 1 - ema_decay)
        return float(loss.detach())

    return step


def time_steps(
    step: Callable[[dict[str, Any]], Any], batches: Sequence[dict[str, Any]], n: int, warmup: int
) -> list[float]:
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        step(batches[i % len(batches)])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------- loop overhead
class StepClock(L.Callback):
    """Wall time between successive `on_train_batch_start`s: a whole loop iteration, every hook included.

    With `paired`, one bare step (another model, same work) runs inside every iteration, timed on its own and
    taken out of the iteration's time: both are then measured under the same momentary machine load."""

    def __init__(self, paired: Callable[[int], Any] | None = None):
        self.paired = paired
        self.stamps: list[float] = []
        self.bare: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.stamps.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.paired is not None:
            t0 = time.perf_counter()
            self.paired(batch_idx)
            self.bare.append(time.perf_counter() - t0)

    def iterations(self) -> list[float]:
        deltas = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return [d - b for d, b in zip(deltas, self.bare)] if self.paired is not None else deltas


def lightning_step_times(
    cfg,
    batches: Sequence[dict[str, Any]],
    n: int,
    warmup: int,
    paired: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[list[float], list[float]]:
    """Per-step times of the trainer built exactly as refedit.train builds it (loggers, callbacks, plugins),
    on pre-generated in-memory batches; start-up (W&B init, setup) is outside the measured steps. With
    `paired`, also the times of that bare step, run once per iteration (see StepClock)."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from refedit.utils.checkpoint_io import AtomicCheckpointIO
    from refedit.utils.run import instantiate_dict

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_method(cfg.method)
    clock = StepClock(None if paired is None else lambda i: paired(batches[i % len(batches)]))
    loggers = instantiate_dict(cfg.get("logger"))
    callbacks = [*instantiate_dict(cfg.get("callbacks")), clock]
    from refedit.train import trainer_arguments

    trainer_cfg = trainer_arguments(cfg.trainer)
    trainer_cfg["max_steps"] = warmup + n + 1
    trainer = instantiate(
        trainer_cfg,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        _convert_="all",
    )
    loader = DataLoader(
        list(batches) * ((warmup + n + 1) // len(batches) + 1), batch_size=None, shuffle=False
    )
    try:
        trainer.fit(model, train_dataloaders=loader)
    finally:
        with contextlib.suppress(Exception):
            import wandb

            if wandb.run is not None:
                wandb.finish()
    return clock.iterations()[warmup : warmup + n], clock.bare[warmup : warmup + n]


def bench_loop(parts: str, work: Path, n: int = 30, warmup: int = 5) -> None:
    """Lightning (the default composed train config) vs a bare PyTorch loop, step for step: the bare step runs
    inside each Lightning iteration on a second copy of the model, so both see the same machine load."""
    cfg = tiny_cfg(parts, work / "loop", "sd_inpaint", smoke=False)
    batches = method_batches(cfg, 8)
    L.seed_everything(cfg.seed, verbose=False)
    ema = (cfg.get("callbacks") or {}).get("ema")
    step = bare_step_fn(build_method(cfg.method), clip=cfg.trainer.get("gradient_clip_val"),
                        ema_decay=float(ema.decay) if ema else None)
    light, bare = lightning_step_times(cfg, batches, n, warmup, paired=step)
    mb, ml = statistics.median(bare), statistics.median(light)
    emit(
        "loop_setting",
        f"sd_inpaint tiny, batch {cfg.data.batch_size}, {n} steps after {warmup} warm-up, "
        f"{torch.get_num_threads()} threads, default train config (logger, callbacks), paired steps; the bare "
        f"loop does the same work (loss, clipping, optimiser, scheduler{', EMA update' if ema else ''})",
    )
    emit("loop_step_ms_bare", mb * 1e3)
    emit("loop_step_ms_lightning", ml * 1e3)
    emit("loop_overhead_ratio", ml / mb)
    emit("loop_overhead_ratio_pairwise_median", statistics.median(a / b for a, b in zip(light, bare)))


# ------------------------------------------------------------------------------------- data / steps
def bench_data(parts: str, work: Path, methods: Sequence[str], steps: int = 4, warmup: int = 2) -> None:
    """Per method at 64 px, one core: time to generate a batch vs one training step (smoke batch size)."""
    from refedit.batch import collate_edit
    from refedit.data.datamodule import build_datamodule

    for name in methods:
        try:
            with _threads(1):
                cfg = tiny_cfg(parts, work / f"data_{name}", name)
                L.seed_everything(cfg.seed, verbose=False)
                model = build_method(cfg.method)
                dm = build_datamodule(cfg.data, model)  # with the method's data-worker transform, as refedit.train
                dm.setup("fit")
                bs = dm.batch_size
                prep = dm.sample_transform or (lambda s: s)
                gen, batches = [], []
                for r in range(steps):
                    t0 = time.perf_counter()
                    batches.append(collate_edit([prep(dm.train_set[r * bs + j]) for j in range(bs)]))
                    gen.append(time.perf_counter() - t0)
                train = time_steps(bare_step_fn(model), batches, steps, warmup)
            tg, ts = statistics.median(gen), statistics.median(train)
            emit(f"train_step_ms_{name}", ts * 1e3)
            emit(f"data_batch_ms_{name}", tg * 1e3)
            emit(f"data_wait_fraction_{name}", tg / (tg + ts))
            emit(f"data_setting_{name}", f"task {cfg.method.task}, batch {bs}, {cfg.data.size} px, 1 thread")
        except Exception as e:  # noqa: BLE001 - one method failing must not hide the others
            _error(name, "data", e)


# ----------------------------------------------------------------------------------------- sampler
def bench_sampler(parts: str, work: Path, steps: tuple[int, int] = (5, 25), repeats: int = 3) -> None:
    """sd_inpaint's DDIM+CFG sampler vs diffusers' StableDiffusionInpaintPipeline on the same exported
    weights. Per-step time = (T(long) - T(short)) / (long - short): fixed costs (encode, decode, text)
    cancel."""
    import numpy as np
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from refedit.batch import collate_edit
    from refedit.data.toyworld import build_sample

    cfg = tiny_cfg(parts, work / "sampler", "sd_inpaint")
    torch.manual_seed(0)
    model = build_method(cfg.method).eval()
    batch = collate_edit([build_sample("text_inpaint", 7, size=int(cfg.backbone.resolution))])
    model.export_diffusers(work / "pipe")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        work / "pipe", safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    size = int(cfg.backbone.resolution)
    image = Image.fromarray(
        ((batch["source"][0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    )
    mask = Image.fromarray((batch["mask"][0, 0].numpy() * 255).astype(np.uint8))
    scale = float(model.sampling_cfg["guidance_scale"])

    def ours(k: int) -> None:
        model.sample(batch, num_steps=k, guidance_scale=scale, generator=torch.Generator().manual_seed(0))

    def theirs(k: int) -> None:
        pipe(
            prompt=batch["caption"],
            image=image,
            mask_image=mask,
            height=size,
            width=size,
            num_inference_steps=k,
            guidance_scale=scale,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )

    def per_step(fn: Callable[[int], None]) -> float:
        fn(steps[0])  # warm-up
        t = {}
        for k in steps:
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(k)
                runs.append(time.perf_counter() - t0)
            t[k] = statistics.median(runs)
        return (t[steps[1]] - t[steps[0]]) / (steps[1] - steps[0])

    with torch.no_grad():
        a, b = per_step(ours), per_step(theirs)
        a = min(a, per_step(ours))  # alternate: load drift shows up in both
        b = min(b, per_step(theirs))
    emit("sampler_setting", f"sd_inpaint tiny, {size} px, guidance {scale}, steps {steps[0]} vs {steps[1]}")
    emit("sampler_step_ms_refedit", a * 1e3)
    emit("sampler_step_ms_diffusers", b * 1e3)
    emit("sampler_step_overhead_vs_diffusers", a / b)


# --------------------------------------------------------------------------------------------- GPU
def _strip_pretrained(node: Any) -> Any:
    """Random init from configs: every `pretrained` weight source removed (no weights exist here)."""
    if isinstance(node, dict):
        return {k: (None if k == "pretrained" else _strip_pretrained(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_pretrained(v) for v in node]
    return node


def random_init_method(name: str, parts: str, device: str | torch.device, extra: Sequence[str] = ()):
    """The method's real-scale architecture, randomly initialised on `device` (the tokenizer comes from the
    tiny parts: only the ids' count matters for speed)."""
    from refedit.flops import compose_real_scale, install_tokenizer_stand_ins

    cfg = compose_real_scale(name, extra)
    method = _strip_pretrained(to_dict(cfg.method))
    method["backbone"]["tokenizer"] = {"pretrained": parts, "subfolder": "tokenizer"}
    with torch.device(device):
        model = build_method(method)
    install_tokenizer_stand_ins(model)
    return cfg, model.to(device)


def gpu_throughput(
    name: str,
    parts: str,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    resolution: int = 512,
    steps: int = 10,
    warmup: int = 3,
    batch_size: int | None = None,
    extra: Sequence[str] = (),
) -> dict[str, float]:
    """Training samples/s of the real-scale method at its experiment's per-GPU batch (halved on OOM), with
    an autocast forward as Lightning's bf16-mixed."""
    from refedit.flops import shaped_batch

    overrides = [f"backbone.resolution={resolution}", *extra]
    cfg, model = random_init_method(name, parts, device, overrides)
    bs = int(batch_size or cfg.data.batch_size)
    step = bare_step_fn(
        model, clip=cfg.trainer.get("gradient_clip_val"), autocast=None if dtype == torch.float32 else dtype
    )
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    while True:
        try:
            batch = shaped_batch(cfg, bs, device=device)
            for k, v in batch.items():
                if isinstance(v, torch.Tensor) and k not in ("mask", "valid", "reference_mask"):
                    batch[k] = torch.rand_like(v) * 2 - 1
            for _ in range(warmup):
                step(batch)
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step(batch)
            sync()
            dt = (time.perf_counter() - t0) / steps
            break
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs //= 2
            torch.cuda.empty_cache()
    mem = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else 0.0
    return {
        "batch": bs,
        "step_s": dt,
        "samples_per_s": bs / dt,
        "max_mem_gib": mem,
        "gradient_checkpointing": bool(cfg.backbone.get("gradient_checkpointing")),
    }


def bench_gpu(parts: str, methods: Sequence[str]) -> None:
    if not torch.cuda.is_available():
        emit("gpu", "not available (samples/s and MFU need a GPU)")
        return
    from refedit.flops import method_flops

    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    emit("gpu", f"{gpu} (bf16 dense peak {peak / 1e12:.0f} TFLOP/s)" if peak else gpu)
    for name in methods:
        try:
            r = gpu_throughput(name, parts)
            emit(f"gpu_samples_per_s_{name}", r["samples_per_s"])
            emit(
                f"gpu_setting_{name}",
                f"512 px bf16-mixed, batch {r['batch']}, gradient checkpointing "
                f"{r['gradient_checkpointing']}, peak mem {r['max_mem_gib']:.1f} GiB",
            )
            if peak:
                f = method_flops(name, extra=["backbone.resolution=512"]).train
                emit(f"gpu_mfu_{name}", r["samples_per_s"] * f / peak)
        except Exception as e:  # noqa: BLE001
            _error(name, "gpu", e)
        finally:
            torch.cuda.empty_cache()


# -------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    from refedit.flops import method_names

    ap = argparse.ArgumentParser(prog="python -m refedit.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument(
        "--methods", default="", help="comma-separated methods (default: every conf/method/*.yaml)"
    )
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    methods = [m for m in args.methods.split(",") if m] or method_names()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    emit("bench_threads", torch.get_num_threads())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refedit-bench-") as tmp:
        work = Path(tmp)
        parts = tiny_parts(work)
        emit("bench_parts", parts)
        for section, run in (
            ("loop", lambda: bench_loop(parts, work)),
            ("data", lambda: bench_data(parts, work, methods)),
            ("sampler", lambda: bench_sampler(parts, work)),
            ("flops", lambda: _flops(methods)),
            ("gpu", lambda: bench_gpu(parts, methods)),
            ("pipelines", bench_pipelines),
        ):
            if section not in only:
                continue
            try:
                run()
            except Exception as e:  # noqa: BLE001
                _error(section, section, e)
    emit("bench_seconds", time.perf_counter() - start)
    return 0


def bench_pipelines() -> None:
    """The data pipelines' own benchmarks (toyworld generation vs a tiny train step; decoded frame pairs and
    boxed samples per second per core), run as scripts and their `name: value` lines forwarded."""
    import subprocess

    from refedit.utils.config import REPO_ROOT

    for script in ("toyworld_speed.py", "data_speed.py"):
        path = REPO_ROOT / "experiments" / "benchmarks" / script
        res = subprocess.run(
            [sys.executable, str(path)],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        if res.returncode != 0:
            emit(f"{path.stem}_error", (res.stderr.strip().splitlines() or ["failed"])[-1])
            continue
        for line in res.stdout.splitlines():
            if ": " in line and not line.startswith(" "):
                print(line, flush=True)


def _flops(methods: Sequence[str]) -> None:
    from refedit.flops import report

    report(methods)


if __name__ == "__main__":
    sys.exit(main())
