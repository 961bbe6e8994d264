"""How fast is toyworld compared with the training step it feeds?

Prints `name: value` lines:
  toyworld_<task>_<size>px_samples_per_s   one core (torch and BLAS on one thread), every task, 64 and 256 px
  tiny_unet_train_step_ms                   forward + backward + AdamW step of the tiny UNet (conf/backbone/tiny.yaml),
                                            batch 8, latents (8,4,16,16), context (8,8,64), one thread
  toyworld_slowest_task_64px                the task with the fewest samples/s at 64 px
  toyworld_batch8_64px_ms                   time to build a batch of 8 of that task at 64 px
  toyworld_batch_over_train_step_ratio      batch8 time / train-step time; target < 0.10

Timings are CPU time of this (single-threaded) process, best of several repeats, both sides measured the same
way and interleaved: on a shared machine wall-clock time mostly measures the neighbours.
Run: OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python experiments/benchmarks/toyworld_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from refedit.batch import collate_edit  # noqa: E402
from refedit.data.toyworld import TASKS, build_sample  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def batch_fn(task: str, size: int, n: int, start: int = 0):
    counter = iter(range(start, 10**9))

    def run():
        collate_edit([build_sample(task, next(counter), size=size) for _ in range(n)])

    return run


def train_step_fn():
    from diffusers import UNet2DConditionModel
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/backbone/tiny.yaml").unet.config, resolve=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x, ctx = torch.randn(8, 4, 16, 16), torch.randn(8, 8, 64)
    t = torch.randint(0, 1000, (8,))

    def run():
        loss = torch.nn.functional.mse_loss(unet(x, t, encoder_hidden_states=ctx).sample, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reps = 3 if args.quick else 7
    per_s: dict[str, float] = {}
    for size, n in ((64, 16), (256, 4)):
        for task in TASKS:
            dt = best_time(batch_fn(task, size, n), reps)
            per_s[f"{task}_{size}"] = n / dt
            print(f"toyworld_{task}_{size}px_samples_per_s: {n / dt:.1f}", flush=True)
    slowest = min(TASKS, key=lambda k: per_s[f"{k}_64"])
    step = train_step_fn()
    batch = batch_fn(slowest, 64, 8, start=10_000)
    # interleave the two measurements so both see the same machine load
    t_step, t_batch = float("inf"), float("inf")
    step()
    batch()
    for _ in range(reps):
        t_step = min(t_step, best_time(step, 1))
        t_batch = min(t_batch, best_time(batch, 2))
    print(f"tiny_unet_train_step_ms: {t_step * 1e3:.1f}")
    print(f"toyworld_slowest_task_64px: {slowest}")
    print(f"toyworld_batch8_64px_ms: {t_batch * 1e3:.2f}")
    ratio = t_batch / t_step
    print(f"toyworld_batch_over_train_step_ratio: {ratio:.4f}")
    print(f"toyworld_ratio_target_met: {ratio < 0.10}")


if __name__ == "__main__":
    main()
