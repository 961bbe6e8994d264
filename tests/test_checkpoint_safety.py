"""Checkpoints are read weights-only: a file whose pickle would run code is refused by the inference entry
points with a one-line message naming it, and nothing runs; refedit's own checkpoints still load."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from refedit.utils.checkpoint import CheckpointError, read_checkpoint


class _RunsCode:
    """Unpickling this calls os.system: with full pickle loading, reading the file creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def ckpt(one_step_ckpt):
    return one_step_ckpt


@pytest.fixture
def evil(tmp_path):
    """A checkpoint shaped like refedit's whose pickle runs `touch marker`, and the marker's path."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "shared.ckpt"
    torch.save({"state_dict": {}, "refedit_method": "refedit.methods.sd_inpaint.SDInpaint",
                "hyper_parameters": {}, "payload": _RunsCode(marker)}, path)
    return path, marker


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    m = np.zeros((64, 64), np.uint8)
    m[16:40, 16:40] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    return tmp_path


def _run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300)


def _assert_refused(res, path):
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert str(path) in last and "refused" in last and "posix.system" in last, res.stderr[-2000:]


def test_edit_refuses_a_checkpoint_whose_pickle_runs_code(evil, inputs):
    path, marker = evil
    res = _run("refedit.edit", f"ckpt={path}", f"source={inputs / 'src.png'}", f"mask={inputs / 'mask.png'}",
               "caption=x", f"out={inputs / 'out.png'}")
    _assert_refused(res, path)
    assert not marker.exists() and not (inputs / "out.png").exists()


def test_eval_refuses_a_checkpoint_whose_pickle_runs_code(evil, tmp_path):
    path, marker = evil
    res = _run("refedit.eval", f"ckpt={path}", f"hydra.run.dir={tmp_path / 'eval'}")
    _assert_refused(res, path)
    assert not marker.exists()


def test_every_loader_refuses_it(evil, tmp_path):
    """export, the demo's checkpoint listing and training resume go through the same reader."""
    from refedit.export import export
    from refedit.methods import load_method

    path, marker = evil
    for load in (read_checkpoint, load_method, lambda p: export(str(p), str(tmp_path / "exp"))):
        with pytest.raises(CheckpointError, match=rf"{path} was refused.*'posix.system'"):
            load(path)
    assert not marker.exists() and not (tmp_path / "exp").exists()


def test_a_method_entry_naming_another_callable_is_refused(ckpt, tmp_path):
    """Weights-only data can still name a class to build from its stored arguments: only refedit methods."""
    from refedit.methods import load_method

    marker = tmp_path / "code-ran"
    ck = read_checkpoint(ckpt)
    for target in ("os.system", "refedit.methods.base.os.system", "refedit.methods.base.importlib"):
        ck.update(refedit_method=target, hyper_parameters={"command": f"touch {marker}"})
        bad = tmp_path / "named.ckpt"
        torch.save(ck, bad)
        with pytest.raises(CheckpointError, match=rf"{bad} names '{target}', not a refedit method"):
            load_method(bad)
    assert not marker.exists()


def test_a_real_checkpoint_loads_weights_only(ckpt):
    """What refedit stores (loop, optimiser, EMA, numpy RNG state) passes the allow-list and loads."""
    from refedit.methods import load_method

    ck = read_checkpoint(ckpt)
    assert isinstance(ck["rng_states"][0]["numpy"][1], np.ndarray)  # the numpy RNG state, via the allow-list
    model = load_method(ckpt)
    assert model.name == "sd_inpaint" and not model.training
    ema = ck["ema_state"]
    name = next(iter(ema))
    assert torch.equal(dict(model.named_parameters())[name].detach(), ema[name])


def test_export_writes_safetensors_only(ckpt, tmp_path):
    from refedit.export import export

    out = export(ckpt, str(tmp_path / "exported"))
    files = [p for p in out.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights), weights
