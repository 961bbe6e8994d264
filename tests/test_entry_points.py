"""Every entry point reports a known input error as one line naming the file or option, without a traceback,
exit status 2; an output path that cannot be written stops it before any work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(module: str, *args: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _assert_one_line(res, prog: str, *expect: str):
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "HYDRA_FULL_ERROR" not in res.stderr, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ": error:" in ln]
    assert len(errors) == 1 and errors[0] == res.stderr.strip().splitlines()[-1], res.stderr[-3000:]
    assert errors[0].startswith(f"{prog}: error: ") and all(e in errors[0] for e in expect), errors[0]


@pytest.fixture
def files(tmp_path):
    """A corrupt checkpoint, a stand-in checkpoint file (the checks run before it is read) and a plain file
    to use as a directory that cannot exist."""
    (tmp_path / "corrupt.ckpt").write_bytes(b"PK\x03\x04 not a whole zip archive")
    (tmp_path / "any.ckpt").write_bytes(b"never read")
    (tmp_path / "afile").write_text("a file, not a directory")
    return tmp_path


def _train_args(parts, run_dir):
    return [f"backbone.root={parts}", "backbone.build_foundations=false", "logger=none",
            f"hydra.run.dir={run_dir}", "trainer.max_steps=1"]


@pytest.mark.parametrize("case", ["batch_size", "missing_annotations", "corrupt_resume", "unwritable_run_dir"])
def test_train(random_parts, files, case):
    args = _train_args(random_parts, files / "run")
    if case == "batch_size":
        res, expect = _run("refedit.train", *args, "data.batch_size=0"), ("data.batch_size=0",)
    elif case == "missing_annotations":
        nope = files / "nope.json"
        res = _run("refedit.train", *args, "data=coco_boxes", f"data.annotations={nope}",
                   f"data.image_root={files}", f"data.val_annotations={nope}", f"data.val_image_root={files}")
        expect = ("missing file", str(nope))
    elif case == "corrupt_resume":
        res = _run("refedit.train", *args, f"ckpt_path={files / 'corrupt.ckpt'}")
        expect = (str(files / "corrupt.ckpt"), "corrupt")
    else:
        res = _run("refedit.train", *_train_args(random_parts, files / "afile" / "run"))
        expect = ("hydra.run.dir=", "not a directory")
    _assert_one_line(res, "refedit.train", *expect)


@pytest.mark.parametrize("case", ["corrupt_ckpt", "missing_data_dir", "unwritable_run_dir"])
def test_eval(files, case):
    run_dir = files / ("afile" if case == "unwritable_run_dir" else "") / "eval"
    ckpt = files / ("corrupt.ckpt" if case == "corrupt_ckpt" else "any.ckpt")
    extra = [f"data_dir={files / 'no_such_dir'}"] if case == "missing_data_dir" else []
    res = _run("refedit.eval", f"ckpt={ckpt}", f"hydra.run.dir={run_dir}", *extra)
    expect = {"corrupt_ckpt": (str(ckpt), "corrupt"), "missing_data_dir": ("data_dir=", "no such directory"),
              "unwritable_run_dir": ("hydra.run.dir=", "not a directory")}[case]
    _assert_one_line(res, "refedit.eval", *expect)


def test_compare_checks_given_checkpoints_before_training(files):
    res = _run("refedit.compare", "preset=smoke", f"+checkpoints.sd_inpaint={files / 'gone.ckpt'}",
               f"hydra.run.dir={files / 'cmp'}")
    _assert_one_line(res, "refedit.compare", "checkpoints.sd_inpaint=", "no such file")
    assert not (files / "cmp" / "train").exists()


@pytest.mark.parametrize("out, expect", [("afile/result.png", "not a directory"),
                                         ("result.xyz", "unknown file type")])
def test_edit_checks_out_before_loading(files, out, expect):
    """The stand-in checkpoint is never read: the output path is refused first."""
    (files / "src.png").write_bytes(b"")
    res = _run("refedit.edit", f"ckpt={files / 'any.ckpt'}", f"source={files / 'src.png'}",
               f"mask={files / 'src.png'}", f"out={files / out}")
    _assert_one_line(res, "refedit.edit", "out=", expect)


def test_export_checks_out_before_loading(files):
    res = _run("refedit.export", f"ckpt={files / 'any.ckpt'}", f"out={files / 'afile' / 'exported'}")
    _assert_one_line(res, "refedit.export", "out=", "not a directory")


def test_report_input_errors_unwraps_known_errors_and_keeps_bugs(capsys):
    from hydra.errors import InstantiationException

    from refedit.data.errors import MissingFileError
    from refedit.utils.cli import report_input_errors

    def wrapped_by_hydra():
        try:
            raise MissingFileError("/data/a.json")
        except MissingFileError as e:
            raise InstantiationException("Error in call to target 'x':\nMissingFileError(...)") from e

    def from_a_worker():  # how torch re-raises a DataLoader worker's error
        raise MissingFileError("Caught MissingFileError in DataLoader worker process 0.\nOriginal Traceback "
                               "(most recent call last):\n  File ...\nMissingFileError: missing file: /d/b.png")

    for fn, line in ((wrapped_by_hydra, "prog: error: missing file: /data/a.json"),
                     (from_a_worker, "prog: error: MissingFileError: missing file: /d/b.png")):
        with pytest.raises(SystemExit) as exc:
            report_input_errors("prog")(fn)()
        assert exc.value.code == 2 and capsys.readouterr().err.strip() == line

    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        report_input_errors("prog")(bug)()


@pytest.mark.parametrize(("args", "expect"), [
    (["ckpts=/nonexistent/run"], ("ckpts=/nonexistent/run", "no such file")),
    (["port=eighty"], ("port='eighty'", "integer")),
    (["--ckpts", "x"], ("not key=value",)),
    (["colour=red"], ("unknown option 'colour'",)),
    (["task=paint"], ("task='paint'", "exemplar_inpaint")),
])
def test_demo_takes_key_value_options_and_reports_bad_ones_in_one_line(args, expect):
    _assert_one_line(_run("refedit.demo", *args), "refedit-demo", *expect)


def test_demo_options_parse_to_their_types():
    from refedit.demo import parse_args

    opts = parse_args(["ckpts=a.ckpt,b.ckpt", "port=7861", "max_file_mb=2.5", "task=coarse_edit"])
    assert (opts.ckpts, opts.port, opts.max_file_mb, opts.task, opts.host) == \
        ("a.ckpt,b.ckpt", 7861, 2.5, "coarse_edit", "127.0.0.1")
