"""`refedit-demo`, the web editor: edits through gradio_client against the app on a free localhost port, its error
messages, what it refuses to serve, and a real headless-chromium session (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

from gradio_client import handle_file  # noqa: E402

from refedit.demo import DemoEngine, build_app, chromium_missing, free_port, launch  # noqa: E402

METHODS = ("sd_inpaint", "paint_by_example", "mimicbrush", "magic_fixup", "magdiff")
FRAMES = 4
MAX_SIDE = 512
MAX_MB = 1
SRC_HW = (56, 72)  # not the checkpoints' 64 px square: results must come back at the source's size


def _untrained_checkpoint(method: str, parts: str, path: Path, *overrides: str) -> Path:
    """A tiny random-weight checkpoint as `load_method` reads it (what a 0-step training run would write)."""
    from refedit.utils.config import build_method, compose

    cfg = compose("train", [f"method={method}", f"backbone.root={parts}", "backbone.build_foundations=false",
                            *overrides])
    torch.manual_seed(0)
    model = build_method(cfg.method)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def ckpts(random_parts, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("demo_ckpts")
    return [_untrained_checkpoint(m, random_parts, d / f"{m}.ckpt",
                                  *([f"method.num_frames={FRAMES}"] if m == "magdiff" else [])) for m in METHODS]


@pytest.fixture(scope="module")
def served(ckpts, tmp_path_factory):
    """(engine, url, client) of the app on a free localhost port; closed after the module."""
    engine = DemoEngine(ckpts, workdir=tmp_path_factory.mktemp("demo_work"), device="cpu", max_side=MAX_SIDE,
                        max_file_bytes=MAX_MB * 2**20)
    app = build_app(engine)
    port = free_port()
    launch(app, engine, port=port, max_file_mb=MAX_MB, block=False)  # host: the default
    url = f"http://127.0.0.1:{port}/"
    client = gradio_client.Client(url, verbose=False)
    yield engine, app, url, client
    app.close()
    engine.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("demo_inputs")
    rng = np.random.default_rng(0)
    h, w = SRC_HW
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / "src.png")
    layer = np.zeros((h, w, 4), np.uint8)
    layer[16:40, 20:44] = (255, 0, 0, 255)  # a brush stroke
    Image.fromarray(layer).save(d / "layer.png")
    Image.fromarray(np.zeros((h, w, 4), np.uint8)).save(d / "blank_layer.png")
    ref = np.zeros((40, 40, 3), np.uint8)
    ref[8:32, 8:32] = (30, 200, 60)
    Image.fromarray(ref).save(d / "ref.png")
    Image.fromarray(np.full((30, 20), 255, np.uint8)).save(d / "ref_mask_wrong_size.png")
    Image.fromarray(ref).save(d / "subject.png")
    Image.fromarray(np.zeros((20, 600, 3), np.uint8)).save(d / "wide.png")  # above MAX_SIDE, a tiny file
    with open(d / "big.png", "wb") as f:  # above MAX_MB
        f.write(os.urandom(int(1.5 * 2**20)))
    return {p.stem: str(p) for p in d.iterdir()}


def _editor(files, layer="layer"):
    return {"background": handle_file(files["src"]), "layers": [handle_file(files[layer])], "composite": None,
            "id": None}


def _edit(client, indices, task, *, editor=None, reference=None, reference_mask=None, caption="a red star",
          moves=(0, 0, 1.0, 0), subject=None, box=(None, None, None, None), steps=2, **kw):
    return client.predict(indices, task, editor, *box, reference, reference_mask, None, caption, None, *moves,
                          subject, None, steps, kw.get("guidance"), kw.get("seed", 0), kw.get("strength"),
                          api_name="/edit")


def _value(x):
    """An output as the client hands it: a value, or a component update carrying one."""
    if isinstance(x, dict) and x.get("__type__") == "update":
        x = x.get("value")
    if isinstance(x, dict) and "video" in x:
        x = x["video"]
    if isinstance(x, dict) and "path" in x:
        x = x["path"]
    return x


def _slot(out, index):
    """(caption markdown, image path, video path) of a checkpoint's result slot."""
    return tuple(_value(x) for x in out[1 + 3 * index: 4 + 3 * index])


CASES = {
    "sd_inpaint": ("text_inpaint", {"editor": True}),
    "paint_by_example": ("exemplar_inpaint", {"editor": True, "reference": "ref"}),
    "mimicbrush": ("exemplar_inpaint", {"editor": True, "reference": "ref"}),
    "magic_fixup": ("coarse_edit", {"editor": True, "moves": (8, -4, 1.2, 15)}),
    "magdiff": ("subject_video", {"subject": "subject"}),
}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_edits_its_native_task(served, files, method):
    _, _, _, client = served
    index = METHODS.index(method)
    task, given = CASES[method]
    kw = {k: handle_file(files[v]) for k, v in given.items() if k in ("reference", "subject")}
    if given.get("editor"):
        kw["editor"] = _editor(files)
    if "moves" in given:
        kw["moves"] = given["moves"]
    out = _edit(client, [index], task, **kw)
    caption, image, video = _slot(out, index)
    assert f"{index}: {method}" in caption and "steps 2" in caption and "seed 0" in caption
    assert f"| {index} | {method} |" in out[0]
    if method == "magdiff":
        from refedit.utils.video import read_clip

        assert image is None and video is not None
        clip = read_clip(video if isinstance(video, str) else video["video"])
        assert clip.shape == (FRAMES, 64, 64, 3)
    else:
        assert video is None and image is not None
        arr = np.asarray(Image.open(image))
        assert arr.shape[:2] == SRC_HW and arr.shape[2] in (3, 4)
    for other in set(range(len(METHODS))) - {index}:  # slots of checkpoints that did not run stay empty
        assert _slot(out, other)[1:] == (None, None)


def test_two_checkpoints_side_by_side_with_their_settings(served, files):
    _, _, _, client = served
    out = _edit(client, [1, 2], "exemplar_inpaint", editor=_editor(files), reference=handle_file(files["ref"]),
                guidance=3.0, seed=7, strength=0.75, steps=2)
    for i, m in ((1, "paint_by_example"), (2, "mimicbrush")):
        caption, image, _ = _slot(out, i)
        assert caption.startswith(f"**{i}: {m}**") and " s · " in caption
        assert "steps 2 · guidance 3 · seed 7 · strength 0.75" in caption
        assert np.asarray(Image.open(image)).shape[:2] == SRC_HW


@pytest.mark.parametrize("case, expect", [
    ("no_mask", "no mask drawn"),
    ("no_source", "no source image"),
    ("wrong_size", "reference mask: size 20x30 differs from reference 40x40"),
    ("wrong_method", "is a magdiff model for 'Animate a subject (video)', not for 'Inpaint with a caption'"),
    ("too_wide", f"above this demo's limit of {MAX_SIDE} px"),
    ("bad_box", "x1 must exceed x0"),
    ("bad_steps", "less than minimum value 1"),  # gradio's own check of the steps field
    ("no_checkpoint", "choose at least one checkpoint"),
])
def test_bad_input_is_a_message_and_the_app_keeps_serving(served, files, case, expect):
    _, _, _, client = served
    kw = {"editor": _editor(files)}
    indices, task = [0], "text_inpaint"
    if case == "no_mask":
        kw["editor"] = _editor(files, "blank_layer")
    elif case == "no_source":
        kw["editor"] = None
    elif case == "wrong_size":
        indices, task = [2], "exemplar_inpaint"
        kw.update(reference=handle_file(files["ref"]), reference_mask=handle_file(files["ref_mask_wrong_size"]))
    elif case == "wrong_method":
        indices = [0, 4]
    elif case == "too_wide":
        indices, task = [1], "exemplar_inpaint"
        kw["reference"] = handle_file(files["wide"])
    elif case == "bad_box":
        kw.update(editor=_editor(files, "blank_layer"), box=(30, 10, 20, 40))
    elif case == "bad_steps":
        kw["steps"] = 0
    elif case == "no_checkpoint":
        indices = []
    with pytest.raises(Exception) as err:
        _edit(client, indices, task, **kw)
    assert expect in str(err.value)
    # the next good request works (a box instead of a brush stroke)
    out = _edit(client, [0], "text_inpaint", editor=_editor(files, "blank_layer"), box=(10, 10, 40, 30))
    assert np.asarray(Image.open(_slot(out, 0)[1])).shape[:2] == SRC_HW


def test_checkpoints_are_chosen_only_among_the_given_ones(served, files):
    _, _, _, client = served
    with pytest.raises(Exception) as err:
        _edit(client, [len(METHODS)], "text_inpaint", editor=_editor(files))
    assert "not" in str(err.value).lower()
    engine = served[0]
    from refedit.demo import DemoError

    for bad in (99, -1, "/etc/passwd", True):
        with pytest.raises(DemoError, match="not one of the 5"):
            engine.chosen([bad])


def test_toyworld_example_fills_the_inputs_of_the_task(served):
    _, _, _, client = served
    out = client.predict("exemplar_inpaint", [1], 3, api_name="/example")
    editor, *_, status = out
    assert "toyworld benchmark sample #3" in status
    bg = np.asarray(Image.open(editor["background"]))
    layer = np.asarray(Image.open(editor["layers"][0]))
    assert bg.shape[:2] == (64, 64) and layer[..., 3].any()  # the sample's mask as a brush layer
    ref = out[5]
    assert np.asarray(Image.open(ref)).ndim == 3
    caption = out[8]
    assert isinstance(caption, str) and caption


def test_progress_follows_the_denoising_steps(served, files):
    """The page's progress bar: the sampler's steps (gr.Progress tracking its tqdm) of each checkpoint."""
    _, _, _, client = served
    steps = 20
    job = client.submit([0], "text_inpaint", _editor(files), None, None, None, None, None, None, None, "x", None,
                        0, 0, 1.0, 0, None, None, steps, None, 0, None, api_name="/edit")
    seen = set()
    while not job.done():
        for p in job.status().progress_data or []:
            seen.add((p.desc, p.index, p.length))
        time.sleep(0.02)
    job.result()
    sampling = {(i, n) for d, i, n in seen if d == "sampling"}
    assert sampling and all(n == steps for _, n in sampling), seen


def test_files_outside_the_app_and_oversized_uploads_are_refused(served, ckpts, files):
    engine, app, url, _ = served
    assert app.server_name == "127.0.0.1" and not app.share
    secret_files = ["/etc/passwd", str(Path.cwd() / "pyproject.toml"), str(ckpts[0].resolve())]
    for target in secret_files:
        for route in ("file=", "gradio_api/file="):
            r = httpx.get(f"{url}{route}{target}", timeout=30)
            assert r.status_code in (403, 404), (route, target, r.status_code)
            assert b"root:" not in r.content and b"[project]" not in r.content
    # an upload above max_file_mb is refused by the server
    with open(files["big"], "rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert r.status_code == 413, r.status_code
    # a request naming a server file as an input is refused before it reaches the handler
    body = {"data": [[0], "text_inpaint", {"background": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
                                           "layers": [], "composite": None, "id": None},
                     None, None, None, None, None, None, None, "", None, 0, 0, 1, 0, None, None, 2, None, 0, None]}
    r = httpx.post(f"{url}gradio_api/call/edit", json=body, timeout=30)
    event_id = r.json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/edit/{event_id}", timeout=60).text
    assert "event: error" in stream and "root:" not in stream
    # and the engine itself refuses a depth file that gradio did not receive as an upload
    from refedit.demo import DemoError

    with pytest.raises(DemoError, match="not an uploaded file"):
        engine.check_upload("/etc/passwd", "depth")


def test_another_host_only_when_asked_and_with_a_warning(served, capsys):
    """Any address but localhost prints a warning (127.0.0.2: still loopback, so the test exposes nothing)."""
    engine = served[0]
    app = build_app(engine)
    port = free_port()
    try:
        launch(app, engine, host="127.0.0.2", port=port, block=False)
        assert app.server_name == "127.0.0.2" and not app.share
        assert "WARNING: serving on 127.0.0.2" in capsys.readouterr().err
        assert httpx.get(f"http://127.0.0.2:{port}/", timeout=30).status_code == 200
    finally:
        app.close()


def test_default_checkpoints_are_the_latest_compare_runs(ckpts, tmp_path, monkeypatch):
    from refedit.demo import default_checkpoints, find_checkpoints

    runs = tmp_path / "logs" / "compare" / "runs"
    for name, methods in (("2024-01-01_00-00-00", METHODS[:1]), ("2024-02-01_00-00-00", METHODS[:2]),
                          ("2024-03-01_00-00-00", ())):  # the newest run trained nothing (failed early)
        (runs / name / ".hydra").mkdir(parents=True)
        (runs / name / ".hydra" / "config.yaml").write_text(f"methods: {list(METHODS)}\ncheckpoints: {{}}\n")
        for n, m in enumerate(methods):
            job = runs / name / "train" / str(n)
            (job / ".hydra").mkdir(parents=True)
            (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n      method: {m}\n")
            (job / "checkpoints").mkdir()
            (job / "checkpoints" / "final.ckpt").symlink_to(ckpts[METHODS.index(m)])
    monkeypatch.setenv("REFEDIT_ROOT", str(tmp_path))
    found = default_checkpoints()
    assert [p.parent.parent.parent.parent.name for p in found] == ["2024-02-01_00-00-00"] * 2
    assert [DemoEngine([p], workdir=tmp_path / "w").infos[0].method for p in found] == list(METHODS[:2])
    assert find_checkpoints([runs / "2024-02-01_00-00-00"]) == found  # a run dir on the command line
    assert find_checkpoints([f"{ckpts[0]},{ckpts[1]}", ckpts[0]]) == ckpts[:2]  # commas, duplicates dropped
    monkeypatch.setenv("REFEDIT_ROOT", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="make compare"):
        default_checkpoints()


def test_core_imports_without_gradio():
    """A plain install (no demo extra) imports the training entry point, every method and the edit CLI: none of
    them pulls gradio in."""
    code = ("import sys; sys.modules['gradio'] = None; sys.modules['gradio_client'] = None\n"
            "import refedit, refedit.train, refedit.methods, refedit.edit\n"
            "assert 'gradio' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "try:\n    import gradio\nexcept ImportError:\n    print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.slow
def test_browser_example_edit_and_screenshot(served, tmp_path):
    """Headless chromium: open the page, 'Use toyworld example', run, wait for the result, screenshot."""
    why = chromium_missing()
    if why:
        pytest.skip(why)
    from refedit.demo import browser_edit

    _, _, url, _ = served
    t0 = time.time()
    shot = browser_edit(url, tmp_path / "demo.png", timeout=240)
    img = np.asarray(Image.open(shot))
    assert img.shape[0] > 500 and img.shape[1] > 500 and img.std() > 5, (img.shape, time.time() - t0)
