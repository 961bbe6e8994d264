"""The comparison pipeline: adapters, trivial rows, the report, and `refedit.eval` on a COCOEE-layout folder."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from refedit.eval import adapters
from refedit.eval.benchmark import BenchmarkConfig, benchmark_batches, evaluate


@pytest.fixture(scope="module")
def untrained_probe(tmp_path_factory):
    from refedit.eval.features import ToyworldProbe

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("probe")
    ToyworldProbe().eval().save(d, {"version": "test"})
    return str(d)


def _small(**kw) -> BenchmarkConfig:
    return BenchmarkConfig(**{"num_samples": 4, "num_steps": 2, "batch_size": 4, "frames": 4, "grid_samples": 2, **kw})


@pytest.mark.parametrize("task", adapters.TASKS)
def test_trivial_rows_never_see_the_edit_region(task):
    """A trivial row's output inside the edit region must not depend on the ground-truth pixels there."""
    batch = benchmark_batches(task, _small())[0]
    for name in adapters.TRIVIAL:
        _, _, post = adapters.prepare(name, task, batch)
        a = post(None)
        if task == "subject_video":
            continue  # the clip's other frames are the point of the task; covered by the frame-wise adapters
        hacked = dict(batch)
        region = batch["mask"] > 0.5
        hacked["source"] = torch.where(region, torch.zeros_like(batch["source"]), batch["source"])
        if "target" in batch and task == "exemplar_inpaint":
            hacked["target"] = hacked["source"]
        _, _, post2 = adapters.prepare(name, task, hacked)
        assert torch.equal(a, post2(None)), f"{name} on {task} reads the pixels it must produce"


def test_adapters_give_each_method_the_keys_it_samples_with():
    need = {"sd_inpaint": {"source", "mask", "caption"}, "paint_by_example": {"source", "mask", "reference"},
            "mimicbrush": {"source", "mask", "reference"}, "magic_fixup": {"coarse", "valid", "reference"},
            "magdiff": {"subject", "subject_inplace", "caption"}}
    for task in adapters.TASKS:
        batch = benchmark_batches(task, _small())[0]
        for method, keys in need.items():
            inputs, kw, _ = adapters.prepare(method, task, batch)
            assert keys <= set(inputs), (method, task, sorted(inputs))


def test_evaluate_writes_report_and_paste_beats_blur_on_identity(tmp_path, untrained_probe):
    from refedit.eval.features import ToyworldProbe

    probe = ToyworldProbe.load(untrained_probe)
    summary = evaluate({"paste": None, "blur_fill": None}, _small(tasks=("exemplar_inpaint",)), probe, tmp_path,
                       {"what": "test"})
    for f in ("results.csv", "summary.csv", "report.md", "plots/exemplar_inpaint_samples.png"):
        assert (tmp_path / f).is_file(), f
    means = {(s["method"], s["metric"]): s["mean"] for s in summary}
    assert means[("paste", "identity")] > means[("blur_fill", "identity")]
    assert {"psnr_in", "ssim_in", "psnr_out", "identity", "fid", "kid", "seconds"} <= {m for _, m in means}
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 8 and {r["method"] for r in rows} == {"paste", "blur_fill"}


def test_eval_cli_on_toyworld_cocoee_export(random_parts, tmp_path, untrained_probe):
    """`make eval CKPT=... DATA=<COCOEE dir>` end to end (tiny random checkpoint, 2 samples)."""
    from refedit.data.toyworld.export import export
    from refedit.train import train
    from refedit.utils.config import compose

    export(tmp_path / "export", n=2, size=64, frames=4)
    cocoee = tmp_path / "export" / "cocoee"
    assert (cocoee / "GT").is_dir()
    cfg = compose("train", [f"backbone.root={random_parts}", "backbone.build_foundations=false",
                            f"paths.output_dir={tmp_path / 'run'}", "logger=csv", "trainer.max_steps=2",
                            "data.batch_size=2", "callbacks.image_logger.num_steps=2"])
    ckpt = train(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "-m", "refedit.eval", f"ckpt={ckpt}", f"data_dir={cocoee}",
                          f"features_path={untrained_probe}", "eval.num_samples=2", "eval.num_steps=2",
                          f"hydra.run.dir={tmp_path / 'eval'}"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "results.csv")))
    assert {r["method"] for r in rows} == {"sd_inpaint", "paste", "blur_fill"}
    assert all(r["task"] == "exemplar_inpaint" for r in rows)
    assert "report:" in res.stdout
    from wandb_files import read_run

    (run,) = (read_run(r) for r in (tmp_path / "eval" / "wandb").glob("offline-run-*"))
    assert run["job_type"] == "eval" and run["name"].startswith("sd_inpaint") and "backbone:tiny" in run["tags"]
    assert {"eval/summary", "eval/exemplar_inpaint_samples"} <= run["history"]  # the table and the sample grid


class _OwnPasteBack:
    """A stand-in method whose own config would paste the source back (as PbE's and MimicBrush's did): its raw
    output is a constant grey; it records the sample() options the benchmark gives it."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def sample(self, batch, **kw):
        self.calls.append(kw)
        ref = batch["video"][:, 0] if "video" in batch else batch["source"]
        out = torch.full_like(ref, 0.25)
        if kw.get("paste_back", True) and "mask" in batch:  # what the method would do left to its own config
            out = torch.where(batch["mask"] > 0.5, out, batch["source"])
        return out[:, None] if "video" in batch else out


@pytest.mark.parametrize("paste_back", [False, True])
def test_paste_back_is_one_benchmark_setting_for_every_method_and_the_report_says_so(paste_back, tmp_path,
                                                                                    untrained_probe):
    """Whatever a method's own sampling.paste_back, the benchmark asks every method for its raw output and pastes
    back (or not) for all of them alike, the trivial rows included; report.md states the setting."""
    from refedit.eval.benchmark import run_method
    from refedit.eval.features import ToyworldProbe

    cfg = _small(tasks=("exemplar_inpaint",), paste_back=paste_back)
    batches = benchmark_batches("exemplar_inpaint", cfg)
    probe = ToyworldProbe.load(untrained_probe)
    outside = batches[0]["mask"].expand_as(batches[0]["source"]) < 0.5
    for name in ("sd_inpaint", "paint_by_example", "mimicbrush", "magdiff", "paste", "blur_fill"):
        model = None if name in adapters.TRIVIAL else _OwnPasteBack()
        _, material = run_method(name, model, "exemplar_inpaint", batches, cfg, probe)
        pred = material["pred"]
        if model is not None:
            assert model.calls and all(c["paste_back"] is False for c in model.calls), name
            if not paste_back:  # the raw output, outside the mask too
                assert torch.all(pred[outside] == 0.25), name
        if paste_back:
            assert torch.equal(pred[outside], batches[0]["source"][outside]), name
        elif model is None:  # trivial rows keep the source outside the mask, up to their 8-bit round trip
            assert (pred[outside] - batches[0]["source"][outside]).abs().max() <= 0.5 / 127.5 + 1e-6, name
    models = {"paint_by_example": _OwnPasteBack(), "sd_inpaint": _OwnPasteBack(), "paste": None}
    evaluate(models, cfg, probe, tmp_path, {"what": "test"})
    report = (tmp_path / "report.md").read_text()
    line = next(ln for ln in report.splitlines() if ln.startswith("- **paste-back**"))
    assert line.startswith(f"- **paste-back**: {'on' if paste_back else 'off'}"), line
