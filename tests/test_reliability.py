"""Reliability of training through the real configs: DDP consistency, exact resume, preemption, corrupt
checkpoints and non-finite losses (tiny sd_inpaint on random parts, CPU)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from refedit.utils.checkpoint import CheckpointError, atomic_torch_save, read_checkpoint
from refedit.utils.config import compose


def _cfg(parts: str, out: Path, *extra: str):
    """Deterministic, lean runs: no image grids, no validation inside the few steps, every step logged."""
    return compose(
        "train",
        [
            f"backbone.root={parts}",
            "backbone.build_foundations=false",
            f"paths.output_dir={out}",
            "logger=csv",
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.val_check_interval=1000",
            "trainer.deterministic=true",
            "trainer.log_every_n_steps=1",
            "~callbacks.image_logger",
            *extra,
        ],
    )


def weights_digest(module) -> str:
    h = hashlib.sha256()
    ids = {id(p) for p in module.trainable_parameters()}
    for name, p in sorted(module.named_parameters()):
        if id(p) in ids:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class WeightDigests(L.Callback):
    """Writes each rank's trainable-weight digest (start and end of fit) to <out_dir>/rank<r>.json."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.start = ""

    def on_fit_start(self, trainer, pl_module):
        self.start = weights_digest(pl_module)

    def on_train_end(self, trainer, pl_module):
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(
            json.dumps(
                {
                    "start": self.start,
                    "end": weights_digest(pl_module),
                    "step": trainer.global_step,
                    "world": trainer.world_size,
                }
            )
        )


class NaNToyWorld(torch.utils.data.Dataset):
    """A toyworld dataset whose sample `nan_index` has a NaN target."""

    def __init__(self, nan_index: int, **kwargs):
        from refedit.data.toyworld import ToyWorldDataset

        self.ds = ToyWorldDataset(**kwargs)
        self.nan_index = nan_index

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        s = self.ds[i]
        if i == self.nan_index:
            s["target"] = torch.full_like(s["target"], float("nan"))
        return s


class SendSignal(L.Callback):
    """Sends `signum` to this process at the end of step `at_step` (a scheduler's preemption notice)."""

    def __init__(self, at_step: int, signum: int = int(signal.SIGUSR1)):
        self.at_step, self.signum = at_step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


class SigtermInValidation(L.Callback):
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


def _losses(metrics_csv: Path) -> dict[int, str]:
    return {
        int(r["step"]): r["train/loss"] for r in csv.DictReader(metrics_csv.open()) if r.get("train/loss")
    }


@pytest.fixture(scope="module")
def trained_ckpt(random_parts, tmp_path_factory) -> Path:
    from refedit.train import train

    return Path(train(_cfg(random_parts, tmp_path_factory.mktemp("run"), "trainer.max_steps=1")))


# ----------------------------------------------------------------------------------------------- DDP
def test_ddp_sim_ranks_end_with_identical_weights(random_parts, tmp_path):
    from refedit.methods import load_method
    from refedit.train import train

    digests = tmp_path / "digests"
    digests.mkdir()
    final = train(
        _cfg(
            random_parts,
            tmp_path,
            "trainer=ddp_sim",
            "trainer.max_steps=2",
            "trainer.deterministic=false",
            f"+callbacks.digests._target_={__name__}.WeightDigests",
            f"+callbacks.digests.out_dir={digests}",
        )
    )
    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 and r["step"] == 2 for r in ranks), ranks
    assert ranks[0]["start"] != ranks[0]["end"], "no training happened"
    assert ranks[0]["end"] == ranks[1]["end"], "DDP ranks hold different weights after training"
    ckpt = read_checkpoint(final)  # written inside the workers: step, optimiser and EMA are there
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"] and ckpt["ema_state"]
    assert weights_digest(load_method(final, use_ema=False)) == ranks[0]["end"]


# ----------------------------------------------------------------------------------------------- resume
def test_resumed_run_equals_uninterrupted_run(random_parts, tmp_path):
    """2N steps straight == N steps + resume for N: same weights (bitwise), EMA, and per-step losses."""
    from refedit.train import train

    n = 2
    straight, split = tmp_path / "straight", tmp_path / "split"
    every = f"callbacks.model_checkpoint.every_n_train_steps={n}"
    a = read_checkpoint(train(_cfg(random_parts, straight, f"trainer.max_steps={2 * n}", every)))
    train(_cfg(random_parts, split, f"trainer.max_steps={n}", every))
    b = read_checkpoint(
        train(_cfg(random_parts, split, f"trainer.max_steps={2 * n}", every, "ckpt_path=last"))
    )
    assert a["global_step"] == b["global_step"] == 2 * n
    for part in ("state_dict", "ema_state"):
        assert a[part].keys() == b[part].keys()
        differ = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not differ, f"{part}: {len(differ)} tensors differ after resume, e.g. {differ[:3]}"
    whole = _losses(straight / "csv" / "version_0" / "metrics.csv")
    first, second = (_losses(split / "csv" / f"version_{v}" / "metrics.csv") for v in (0, 1))
    assert sorted(whole) == list(range(2 * n)) and sorted(second) == list(range(n, 2 * n))
    assert {**first, **second} == whole  # exact strings: the same data order and noise after the resume


def test_sampler_resumes_inside_its_epoch_and_splits_ranks():
    from refedit.data.datamodule import ResumableSampler

    data = list(range(40))
    full = list(ResumableSampler(data, seed=3))
    assert sorted(full) == data and full != data
    s = ResumableSampler(data, seed=3)
    s.resume_at(0, 10)
    assert list(s) == full[10:] and list(s) == full  # only the first pass after a resume is shortened
    s.set_epoch(1)
    assert list(s) != full
    ranks = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == data


# ----------------------------------------------------------------------------------------------- preemption
def test_sigterm_leaves_a_checkpoint_that_resumes(random_parts, tmp_path):
    from refedit.train import train

    run = tmp_path / "run"
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "refedit.train",
        f"backbone.root={random_parts}",
        "backbone.build_foundations=false",
        f"hydra.run.dir={run}",
        "logger=csv",
        "data.batch_size=2",
        "trainer.max_steps=200",
        "trainer.val_check_interval=1000",
        "~callbacks.image_logger",
        # step checkpoints only, so last.ckpt can come from the preemption callback alone
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.save_last=false",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while not list((run / "checkpoints").glob("step*.ckpt")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no step checkpoint within 240 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "training stopped early (SIGTERM)" in err and "ckpt_path=last" in err, err[-2000:]
    assert "preempted: checkpoint" in out
    last = run / "checkpoints" / "last.ckpt"
    step = read_checkpoint(last)["global_step"]
    assert 0 < step < 200
    assert not (run / "checkpoints" / "final.ckpt").exists()
    final = train(
        _cfg(
            random_parts,
            run,
            f"trainer.max_steps={step + 2}",
            "ckpt_path=last",
            "trainer.deterministic=false",
        )
    )
    assert read_checkpoint(final)["global_step"] == step + 2


def test_sigusr1_outside_slurm_checkpoints_and_stops(random_parts, tmp_path):
    from refedit.train import train

    before = signal.getsignal(signal.SIGUSR1)
    # the callback order puts the signal after the preemption callback's check: it is seen one step later
    with pytest.raises(SystemExit, match=r"stopped early \(SIGUSR1\) at step 3.*ckpt_path=last"):
        train(
            _cfg(
                random_parts,
                tmp_path,
                "trainer.max_steps=50",
                f"+callbacks.usr1._target_={__name__}.SendSignal",
                "+callbacks.usr1.at_step=2",
            )
        )
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert signal.getsignal(signal.SIGUSR1) == before, "the SIGUSR1 handler was not restored"


def test_sigterm_during_validation_saves_the_trained_not_the_ema_weights(random_parts, tmp_path):
    from refedit.train import train

    with pytest.raises(SystemExit, match=r"stopped early \(SIGTERM\) at step 2"):
        train(
            _cfg(
                random_parts,
                tmp_path,
                "trainer.max_steps=50",
                "trainer.val_check_interval=2",
                "trainer.limit_val_batches=3",
                "data.val_dataset.length=6",
                f"+callbacks.sigterm._target_={__name__}.SigtermInValidation",
            )
        )
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    differ = [k for k, v in ckpt["ema_state"].items() if not torch.equal(v, ckpt["state_dict"][k])]
    assert differ, "the EMA weights (swapped in for validation) were saved as the trained weights"


def test_submitit_requeue_handler_is_handed_to_lightning():
    """Under submitit Lightning would not install its SLURM requeue handler (one exists already): the
    preemption callback removes submitit's, and puts it back at teardown."""
    from types import SimpleNamespace

    from submitit.core.job_environment import SignalHandler

    from refedit.callbacks.preemption import PreemptionCheckpoint

    env = SimpleNamespace(auto_requeue=True, requeue_signal=signal.SIGUSR1)
    before = signal.getsignal(signal.SIGUSR1)
    submitit_handler = SignalHandler(None, None, None).checkpoint_and_try_requeue
    own = lambda signum, frame: None  # noqa: E731 - not submitit's: left alone
    try:
        signal.signal(signal.SIGUSR1, own)
        cb = PreemptionCheckpoint()
        cb._release_foreign_requeue_handler(env)
        assert signal.getsignal(signal.SIGUSR1) is own
        signal.signal(signal.SIGUSR1, submitit_handler)
        cb._release_foreign_requeue_handler(env)
        # released: Lightning's SLURM signal connector then installs its own requeue handler
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
        cb.teardown(None, None, "fit")
        assert signal.getsignal(signal.SIGUSR1) == submitit_handler
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_requeued_slurm_job_finds_lightnings_hpc_checkpoint_and_wandb_id(tmp_path, monkeypatch):
    """A requeued job resumes from hpc_ckpt_<n>.ckpt by itself; train.py reads the newest's W&B run id."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from refedit.train import _slurm_requeue_checkpoint, _stored_wandb_id

    for n, run in ((2, "run-b"), (10, "run-c"), (1, "run-a")):
        torch.save({"state_dict": {}, "wandb_run_id": run}, tmp_path / f"hpc_ckpt_{n}.ckpt")
    monkeypatch.setattr(SLURMEnvironment, "detect", staticmethod(lambda: False))
    assert _slurm_requeue_checkpoint(tmp_path) is None  # outside SLURM: never resumed implicitly
    monkeypatch.setattr(SLURMEnvironment, "detect", staticmethod(lambda: True))
    newest = _slurm_requeue_checkpoint(tmp_path)
    assert newest == str(tmp_path / "hpc_ckpt_10.ckpt") and _stored_wandb_id(newest) == "run-c"


# ----------------------------------------------------------------------------------------------- bad files
def test_truncated_checkpoint_is_reported_never_loaded(random_parts, trained_ckpt, tmp_path):
    from refedit.methods import load_method
    from refedit.train import train

    data = trained_ckpt.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for bad in (cut, empty):
        with pytest.raises(CheckpointError, match=str(bad)):
            load_method(bad)
    with pytest.raises(CheckpointError, match=rf"{cut}.*(corrupt|truncated)"):
        train(_cfg(random_parts, tmp_path / "resume", "trainer.max_steps=2", f"ckpt_path={cut}"))


def test_checkpoint_of_another_method_is_refused(random_parts, trained_ckpt, tmp_path):
    from refedit.train import train

    ckpt = read_checkpoint(trained_ckpt)
    ckpt["refedit_method"] = "refedit.methods.mimicbrush.MimicBrush"
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(
        CheckpointError, match=rf"{other} was written by refedit.methods.mimicbrush.MimicBrush.*SDInpaint"
    ):
        train(_cfg(random_parts, tmp_path / "resume", "trainer.max_steps=2", f"ckpt_path={other}"))


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_torch_save({"state_dict": {"w": torch.zeros(3)}, "bad": lambda: None}, path)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "a temp file was left behind"


# ----------------------------------------------------------------------------------------------- NaN
def _nan_data(index: int = 1) -> list[str]:
    # 4 samples, batch 2, 2 steps: exactly one batch holds the NaN sample
    return [
        f"data.train_dataset._target_={__name__}.NaNToyWorld",
        f"+data.train_dataset.nan_index={index}",
        "data.train_dataset.length=4",
        "trainer.max_steps=2",
    ]


def test_nonfinite_loss_names_step_and_samples(random_parts, tmp_path):
    from refedit.methods.base import NonFiniteLossError
    from refedit.train import train

    with pytest.raises(
        NonFiniteLossError, match=r"global step [01], batch [01], sample ids .*text_inpaint-1\b"
    ):
        train(_cfg(random_parts, tmp_path, *_nan_data(1)))


def test_skip_nonfinite_skips_and_counts(random_parts, tmp_path):
    from refedit.train import train

    final = read_checkpoint(train(_cfg(random_parts, tmp_path, *_nan_data(1), "trainer.skip_nonfinite=true")))
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values())
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    counts = [float(r["train/nonfinite_steps"]) for r in rows if r.get("train/nonfinite_steps")]
    assert counts and set(counts) == {1.0}, counts  # one step skipped and counted (the count is re-logged)
    assert len([r for r in rows if r.get("train/loss")]) == 1  # the other, finite step trained and logged


def test_ema_under_fsdp_gathers_full_tensors_and_scatters_back(tmp_path):
    """Two gloo ranks, FSDP with per-block units: the sharded EMA, gathered for a checkpoint, equals a
    full-tensor EMA; resuming scatters it back to exactly each rank's shards (tests/scripts/fsdp_ema.py)."""
    script = Path(__file__).parent / "scripts" / "fsdp_ema.py"
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["some_sharded"], "the test module was not actually sharded"
    assert r["names_match"] and r["full_shapes"], r
    assert r["gather_max_err"] == 0.0, r
    assert r["params_untouched"] and r["scatter_exact"], r
