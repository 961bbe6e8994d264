"""What a non-editable install gets: the configs inside the package, the console scripts, and entry points
that find both from an unpacked wheel with no source tree on the path."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from refedit.utils.config import REPO_ROOT

SCRIPTS = ("refedit-train", "refedit-eval", "refedit-compare", "refedit-edit", "refedit-export", "refedit-demo")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the files a release holds, so the build leaves nothing in the checkout."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for name in ("src", "conf"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return next(out.glob("refedit-*.whl"))


def test_wheel_ships_every_config_and_the_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = {f"refedit/conf/{p.relative_to(REPO_ROOT / 'conf').as_posix()}" for p in (REPO_ROOT / "conf").rglob("*.yaml")}
    assert confs and confs <= names, sorted(confs - names)[:5]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert all(re.search(rf"^{s} = refedit\.", text, re.M) for s in SCRIPTS), text


def test_unpacked_wheel_composes_its_own_configs(wheel, tmp_path):
    """From another directory, with only the wheel's files importable: the configs come from refedit/conf and
    logs/.cache go under the current directory."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REFEDIT_ROOT")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", "import refedit.utils.config as c; print(c.CONFIG_DIR)"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and Path(res.stdout.strip()) == site / "refedit" / "conf", res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "refedit.train", "method=sd_inpaint", "experiment=smoke",
                          "--cfg", "job", "--resolve"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"log_dir: {cwd}/logs" in res.stdout and f"cache_dir: {cwd}/.cache" in res.stdout, res.stdout[:3000]


def test_torch_is_pinned_in_one_place():
    """The Makefile's TORCH_SPEC; the other files name no torch version of their own."""
    assert re.search(r"^TORCH_SPEC \?= torch==\d", (REPO_ROOT / "Makefile").read_text(), re.M)
    for name in ("pyproject.toml", "README.md", ".ci/run"):
        assert not re.search(r"torch==\d", (REPO_ROOT / name).read_text()), name
