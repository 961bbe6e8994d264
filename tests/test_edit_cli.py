"""`python -m refedit.edit` on bad input: non-zero exit and a one-line error naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def ckpt(one_step_ckpt):
    return one_step_ckpt


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "src.png")
    m = np.zeros((64, 64), np.uint8)
    m[16:40, 16:40] = 255
    Image.fromarray(m).save(d / "mask.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(d / "empty.png")
    Image.fromarray(np.zeros((32, 48), np.uint8) + 255).save(d / "small_mask.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _edit(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "refedit.edit", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("case, expect", [
    ("missing", "source="),
    ("size", "differs from source"),
    ("empty", "mask is empty"),
    ("not_image", "not a readable image"),
])
def test_bad_input_exits_with_one_line_error(ckpt, files, tmp_path, case, expect):
    args = {"source": files / "src.png", "mask": files / "mask.png"}
    if case == "missing":
        args["source"] = files / "nope.png"
    elif case == "size":
        args["mask"] = files / "small_mask.png"
    elif case == "empty":
        args["mask"] = files / "empty.png"
    else:
        args["source"] = files / "notes.txt"
    res = _edit(f"ckpt={ckpt}", *(f"{k}={v}" for k, v in args.items()), "caption=a red star",
                f"out={tmp_path / 'out.png'}")
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and expect in err[0], res.stderr
    assert not (tmp_path / "out.png").exists()


def test_good_input_writes_the_edit(ckpt, files, tmp_path):
    res = _edit(f"ckpt={ckpt}", f"source={files / 'src.png'}", f"mask={files / 'mask.png'}", "caption=a red star",
                "steps=2", f"out={tmp_path / 'out.png'}")
    assert res.returncode == 0, res.stderr[-2000:]
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (64, 64, 3)


def test_missing_checkpoint_and_unknown_option(files, tmp_path):
    res = _edit(f"ckpt={tmp_path / 'none.ckpt'}", f"source={files / 'src.png'}", f"out={tmp_path / 'o.png'}")
    assert res.returncode != 0 and "ckpt=" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = _edit("ckpt=x", "out=y", "colour=red")
    assert res.returncode != 0 and "unknown option 'colour'" in res.stderr


def test_depth_option_is_loaded_normalised_and_checked(tmp_path):
    """`depth=` (MimicBrush shape control): a 16-bit depth PNG becomes batch['depth'] (1,1,R,R) in [0,1],
    white = near; a size mismatch or a constant map is an error naming the option."""
    from refedit.edit import load_inputs
    from refedit.utils.images import InputError

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    depth = np.tile(np.linspace(1000, 60000, 56, dtype=np.uint16), (40, 1))
    Image.fromarray(depth).save(tmp_path / "depth.png")  # mode I;16
    batch, _ = load_inputs({"source": str(tmp_path / "src.png"), "depth": str(tmp_path / "depth.png")},
                           ("source",), 32)
    d = batch["depth"]
    assert d.shape == (1, 1, 32, 32) and float(d.min()) >= 0 and float(d.max()) <= 1
    assert float(d[0, 0, :, -1].mean()) > 0.95 and float(d[0, 0, :, 0].mean()) < 0.05  # order kept, min-max scaled
    Image.fromarray(depth[:30]).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="depth=.*differs from source"):
        load_inputs({"source": str(tmp_path / "src.png"), "depth": str(tmp_path / "small.png")}, ("source",), 32)
    Image.fromarray(np.full((40, 56), 7, np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(InputError, match="depth=.*constant"):
        load_inputs({"source": str(tmp_path / "src.png"), "depth": str(tmp_path / "flat.png")}, ("source",), 32)
