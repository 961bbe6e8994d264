"""toyworld: determinism, exact flow, masks/boxes vs rendered pixels, task schemas, dataset splits, export.

Flow exactness is tested on albedo renders (``lighting=False``): shading and shadows depend on where an
object is (on purpose: a pasted object must look wrong), so lit pixels do not move with the flow. A
separate test checks that lighting does change a moved object's pixels. The ground truth is always the
rendered pixels, sampled bilinearly at p + flow.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, binary_erosion

from numerics import EPS, assert_close_rel
from refedit.batch import collate_edit, validate_sample
from refedit.data.toyworld import (
    COLOUR_NAMES,
    PATTERNS,
    SHAPES,
    SPLITS,
    TASK_KEYS,
    TASKS,
    ToyWorldDataset,
    build_sample,
    coarse_warp,
    motion_caption,
    render_clip,
    render_scene,
    sample_spec,
    seed_of,
    vocabulary,
)
from refedit.data.toyworld.render import COLOURS, ObjectSpec, boxes_of
from refedit.data.toyworld.tasks import _bilinear

ROOT = Path(__file__).resolve().parents[1]


# Run both in this process and in a fresh subprocess (with other thread counts): same bytes expected.
DIGEST_CODE = """
import hashlib, json
import torch
from refedit.data.toyworld import TASKS, build_sample


def sample_digest(s):
    h = hashlib.sha256()
    for k in sorted(s):
        v = s[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(str((v.dtype, tuple(v.shape))).encode())
            h.update(v.numpy().tobytes())
        else:
            h.update(json.dumps(v, sort_keys=True).encode())
    return h.hexdigest()


def all_digests(seeds=(0, 7), size=24):
    return {f"{t}-{s}": sample_digest(build_sample(t, s, size=size, frames=4)) for t in TASKS for s in seeds}
"""
_ns: dict = {}
exec(DIGEST_CODE, _ns)
sample_digest, all_digests = _ns["sample_digest"], _ns["all_digests"]


# ------------------------------------------------------------------------------------------ determinism
def test_deterministic_across_processes_and_thread_counts():
    code = DIGEST_CODE + "\ntorch.set_num_threads(2)\nprint(json.dumps(all_digests()))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         timeout=120)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs == all_digests()


def test_same_seed_same_sample_and_seeds_differ():
    for task in TASKS:
        a, b = build_sample(task, 3, size=32, frames=4), build_sample(task, 3, size=32, frames=4)
        assert sample_digest(a) == sample_digest(b)
        c = build_sample(task, 4, size=32, frames=4)
        key = "video" if task == "subject_video" else "target"
        assert not torch.equal(a[key], c[key]), task
    frames = [render_scene(s, 32).rgb_u8[0] for s in range(20)]
    assert len({f.tobytes() for f in frames}) == 20


def test_scene_is_resolution_independent():
    small, big = render_scene(5, 64), render_scene(5, 256)
    down = big.rgb.reshape(3, 64, 4, 64, 4).mean((2, 4))
    assert np.abs(down - small.rgb[0]).mean() < 0.03  # the same world, rendered finer
    assert small.spec.objects == big.spec.objects


def test_attribute_classes_and_captions():
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8 and len(PATTERNS) >= 4
    seen = {"shape": set(), "colour": set(), "pattern": set()}
    vocab = set(vocabulary())
    for s in range(300):
        spec = sample_spec(s)
        assert 1 <= len(spec.objects) <= 3
        assert len({o.colour for o in spec.objects}) == len(spec.objects)  # a caption names one object
        hs = [o.height for o in spec.objects]
        assert hs == sorted(hs) and len(set(hs)) == len(hs)  # strict depth order
        for o in spec.objects:
            for k, v in o.labels.items():
                seen[k].add(v)
            cap = motion_caption(spec, 0, 0.0, 1.0)
            assert set(cap.replace(",", "").split()) <= vocab, cap
    assert seen == {"shape": set(range(len(SHAPES))), "colour": set(range(len(COLOUR_NAMES))),
                    "pattern": set(range(len(PATTERNS)))}


def test_motion_caption_words():
    o = ObjectSpec(shape=SHAPES.index("star"), colour=COLOUR_NAMES.index("red"), pattern=PATTERNS.index("striped"),
                   height=0.1, start=(0.7, 0.5), end=(0.3, 0.52), angle=(0.0, 0.1), radius=(0.12, 0.12),
                   pattern_freq=1.5, pattern_phase=(0.0, 0.0))
    spec = sample_spec(0)
    from dataclasses import replace

    spec = replace(spec, objects=(o,), pan=((0.0, 0.0), (0.0, 0.0)))
    assert motion_caption(spec, 0, 0.0, 1.0) == "a red striped star moving left"
    assert motion_caption(spec, 0, 1.0, 0.0) == "a red striped star moving right"
    grow = replace(spec, objects=(replace(o, end=o.start, radius=(0.1, 0.14), angle=(0.0, 2.0)),))
    assert motion_caption(grow, 0, 0.0, 1.0) == "a red striped star growing and spinning"


# ------------------------------------------------------------------------------------------------ flow
def _flow_error(clip, a: int, b: int, flow: np.ndarray) -> tuple[float, int]:
    """Mean |frame_a(p) - frame_b(p + flow(p))| over object pixels visible (interior) in both frames."""
    H = W = clip.size
    yy, xx = np.mgrid[0:H, 0:W]
    x2, y2 = xx + flow[0], yy + flow[1]
    inside = (x2 >= 0) & (x2 <= W - 1) & (y2 >= 0) & (y2 <= H - 1)
    x0 = np.clip(np.floor(x2).astype(int), 0, W - 2)
    y0 = np.clip(np.floor(y2).astype(int), 0, H - 2)
    ia, ib = clip.index(a), clip.index(b)
    tot, n = 0.0, 0
    for o in range(len(clip.spec.objects)):
        ma = binary_erosion(clip.owner[ia] == o, np.ones((3, 3)))
        mb = binary_erosion(clip.owner[ib] == o, np.ones((3, 3)))  # not occluded, away from edges
        sel = ma & inside & mb[y0, x0] & mb[y0, x0 + 1] & mb[y0 + 1, x0] & mb[y0 + 1, x0 + 1]
        if sel.any():
            warped = _bilinear(clip.rgb[ib], x2[sel], y2[sel])
            tot += float(np.abs(warped - clip.rgb[ia][:, sel]).sum()) / 3
            n += int(sel.sum())
    return tot / max(n, 1), n


@pytest.mark.parametrize("seed", range(6))
def test_flow_is_exact_on_rendered_pixels(seed):
    clip = render_clip(seed, 128, 8, lighting=False)
    for a, b in ((0, 1), (2, 6), (7, 3)):  # next frame, any frame, backwards
        err, n = _flow_error(clip, a, b, clip.flow(a, b))
        assert n > 100
        assert err <= 0.02, (seed, a, b, err)


def test_flow_error_at_64px_and_a_wrong_flow_fails():
    errs, wrong = [], []
    for seed in range(12):
        clip = render_clip(seed, 64, 8, lighting=False)
        errs.append(_flow_error(clip, 0, 5, clip.flow(0, 5))[0])
        moved = np.abs(clip.flow(0, 5) - clip.flow(0, 2)).max() > 3
        if moved:
            wrong.append(_flow_error(clip, 0, 5, clip.flow(0, 2))[0])
    assert np.mean(errs) <= 0.02
    assert len(wrong) >= 6 and np.mean(wrong) > 3 * np.mean(errs)
    nxt = render_clip(3, 32, 5).flow_next()
    assert nxt.shape == (4, 2, 32, 32) and nxt.dtype == np.float32


def test_ground_flow_follows_the_pan_exactly():
    seeds = [s for s in range(40) if sample_spec(s).pan[1] != (0.0, 0.0)][:3]
    assert seeds
    for seed in seeds:
        clip = render_clip(seed, 64, 8, lighting=False)
        fl = clip.flow(1, 6)
        far = ~binary_dilation(clip.owner[1] >= 0, np.ones((5, 5)))
        dx, dy = np.unique(fl[0][far]), np.unique(fl[1][far])
        assert len(dx) == 1 and len(dy) == 1 and dx[0] == round(dx[0])  # whole-pixel pan
        ys, xs = np.nonzero(far)
        x2, y2 = xs + int(dx[0]), ys + int(dy[0])
        ok = (x2 >= 0) & (x2 < 64) & (y2 >= 0) & (y2 < 64)
        ok &= ~binary_dilation(clip.owner[6] >= 0, np.ones((5, 5)))[np.clip(y2, 0, 63), np.clip(x2, 0, 63)]
        assert ok.sum() > 500
        np.testing.assert_array_equal(clip.rgb_u8[6][:, y2[ok], x2[ok]], clip.rgb_u8[1][:, ys[ok], xs[ok]])


def test_lighting_changes_with_position():
    """With lighting, a moved object's pixels differ from its warped earlier pixels (shading follows the
    light), which is what makes a pasted object look wrong in coarse_edit."""
    lit_err, flat_err = [], []
    for seed in range(8):
        lit = render_clip(seed, 64, 8)
        flat = render_clip(seed, 64, 8, lighting=False)
        lit_err.append(_flow_error(lit, 0, 7, lit.flow(0, 7))[0])
        flat_err.append(_flow_error(flat, 0, 7, flat.flow(0, 7))[0])
    assert np.mean(lit_err) > 2 * np.mean(flat_err)


def test_coarse_warp_matches_target_without_lighting():
    for seed in range(4):
        spec = sample_spec(seed)
        clip = render_clip(spec, 64, 8, which=[1, 6], lighting=False)
        coarse, valid = coarse_warp(clip, 1, 6)
        inner = binary_erosion(valid, np.ones((3, 3))) & binary_erosion(clip.owner[1] >= -1, np.ones((3, 3)))
        edges = binary_dilation(np.abs(np.diff(clip.owner[1].astype(int), axis=0, prepend=0)) > 0, np.ones((3, 3)))
        sel = inner & ~edges
        assert valid.mean() > 0.6
        assert np.abs(coarse[:, sel] - clip.rgb[1][:, sel]).mean() < 0.03, seed


# ------------------------------------------------------------------------------------- masks and boxes
@pytest.mark.parametrize("seed", [0, 1, 2, 5, 9])
def test_masks_and_boxes_agree_with_rendered_pixels(seed):
    spec = sample_spec(seed)
    clip = render_clip(spec, 64, 4, lighting=False)
    masks, boxes = clip.masks, clip.boxes
    np.testing.assert_array_equal(boxes, boxes_of(masks))
    assert not (masks.sum(1) > 1).any()  # visible masks partition object pixels
    for o in range(len(spec.objects)):
        without = render_clip(spec.without_object(o), 64, 4, lighting=False)
        changed = (clip.rgb_u8 != without.rgb_u8).any(1)  # (F, H, W)
        cov = clip.render.coverage[:, o] > 0
        assert not (changed & ~cov).any()  # the object touches only pixels it covers
        m = masks[:, o]
        assert (changed & m).sum() >= 0.98 * m.sum()  # every visible-mask pixel is its pixel
        # interior visible pixels lie between the object's two tones (lighting off)
        base = np.array(COLOURS[COLOUR_NAMES[spec.objects[o].colour]])
        second = base * 0.3 + 0.62
        others = np.delete(clip.render.coverage, o, axis=1).sum(1) > 0  # thin slivers of other objects
        for f in range(4):
            inner = binary_erosion(m[f], np.ones((3, 3))) & ~others[f]
            px = clip.rgb[f][:, inner].T  # (n, 3)
            d = second - base
            tt = np.clip(((px - base) @ d) / (d @ d), 0, 1)
            assert np.abs(px - (base + tt[:, None] * d)).max() < 3 / 255
        for f in range(4):
            if m[f].any():
                x0, y0, x1, y1 = boxes[f, o]
                assert m[f, y0, x0:x1].any() and m[f, y1 - 1, x0:x1].any()
                assert m[f, y0:y1, x0].any() and m[f, y0:y1, x1 - 1].any()
                assert m[f].sum() == m[f, y0:y1, x0:x1].sum()


def test_depth_follows_occlusion_order():
    clip = render_clip(11, 64, 4)
    d = clip.depth
    assert (d[clip.owner == -1] == 1.0).all()
    for o in range(len(clip.spec.objects)):
        sel = clip.owner == o
        if sel.any():
            assert d[sel].max() < 1.0
            for h in range(o + 1, len(clip.spec.objects)):  # nearer objects are closer to the camera
                if (clip.owner == h).any():
                    assert d[clip.owner == h].max() < d[sel].min()


# --------------------------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("task", TASKS)
def test_task_schema(task):
    samples = [build_sample(task, s) for s in range(4)]
    for s in samples:
        assert tuple(s) == TASK_KEYS[task]
        validate_sample(s)
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == torch.float32
                if k == "video":
                    assert v.shape == (8, 3, 64, 64)
                else:
                    assert v.shape[-2:] == (64, 64), k
        m = s["meta"]
        for key in ("id", "seed", "task", "boxes", "labels", "attributes", "box", "object", "frames"):
            assert key in m
        assert m["task"] == task and set(m["labels"]) == {"shape", "colour", "pattern"}
        json.dumps(m)  # serialisable
        assert isinstance(s["caption"], str) and s["caption"].startswith(("a ", "an "))
    batch = collate_edit(samples)
    validate_sample(batch, batched=True)


def _object_mask(s: dict, pos: int = 0) -> np.ndarray:
    m = s["meta"]
    clip = render_clip(m["seed"] if m["task"] != "coarse_edit" else sample_spec(m["seed"]).without_pan(),
                       m["size"], 8, which=m["frames"])
    return clip.masks[pos, m["object"]]


@pytest.mark.parametrize("task", ["exemplar_inpaint", "exemplar_inpaint_self", "text_inpaint"])
@pytest.mark.parametrize("kind", ["box", "irregular"])
def test_mask_covers_the_edited_object(task, kind):
    for seed in range(5):
        s = build_sample(task, seed, mask_kind=kind)
        mask = s["mask"][0].numpy() > 0
        obj = _object_mask(s)
        assert obj.any() and mask[obj].all()
        assert mask.mean() < 0.6
        if kind == "box":
            ys, xs = np.nonzero(mask)
            assert mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
        assert torch.equal(s["source"], s["target"])
        if task != "text_inpaint":
            rm = s["reference_mask"][0].numpy() > 0
            assert 0.1 < rm.mean() < 0.95
            ref = s["reference"].numpy()
            tgt = s["target"].numpy()[:, obj]
            # the reference shows the object: its colours are close to the masked object's
            assert np.abs(ref[:, rm].mean(1) - tgt.mean(1)).max() < 0.35


def test_exemplar_reference_comes_from_another_frame():
    for seed in range(5):
        s = build_sample("exemplar_inpaint", seed)
        assert s["meta"]["reference_frame"] != s["meta"]["frames"][0]
        assert s["meta"]["frames"][1] == s["meta"]["reference_frame"]
        self_s = build_sample("exemplar_inpaint_self", seed)
        assert self_s["meta"]["reference_frame"] == self_s["meta"]["frames"][0]


def test_reference_imitation_mask_depth_reference():
    for seed in range(6):
        s = build_sample("reference_imitation", seed)
        mask, obj = s["mask"][0].numpy() > 0, _object_mask(s)
        assert (mask & obj).any()
        d = s["depth"][0].numpy()
        assert d.min() >= 0 and d.max() <= 1
        assert (d[obj] > d[~binary_dilation(obj, iterations=2) & (d == 0)].max(initial=0)).all()
        assert s["meta"]["reference_frame"] != s["meta"]["frames"][0]
        assert s["reference_mask"].sum() > 0


def test_coarse_edit_semantics():
    for seed in range(6):
        s = build_sample("coarse_edit", seed)
        m = s["meta"]
        spec = sample_spec(seed).without_pan()
        clip = render_clip(spec, 64, 8, which=m["frames"])
        mask, valid = s["mask"][0].numpy() > 0, s["valid"][0].numpy() > 0
        assert torch.equal(s["source"], s["reference"])
        assert mask[clip.masks[0].any(0)].all() and mask[clip.masks[1].any(0)].all()
        assert mask[~valid].all()  # holes are edit region
        assert (s["coarse"][:, ~valid] == 0).all()
        # outside the edit region nothing changes: coarse = source = target there
        keep = ~mask
        # the same uint8 pixels, mapped to [-1, 1] by another formula: a rounding or two
        assert_close_rel(s["coarse"].numpy()[:, keep], s["target"].numpy()[:, keep], rel=8 * EPS, what="coarse")
        np.testing.assert_array_equal(s["source"].numpy()[:, keep], s["target"].numpy()[:, keep])
        np.testing.assert_array_equal(s["target"].numpy(), (clip.rgb_u8[1].astype(np.float32) - 127.5) / 127.5)


def test_subject_video_cutout():
    for seed in range(4):
        s = build_sample("subject_video", seed, reference_size=48)
        assert s["subject"].shape == (3, 48, 48)
        black = (s["subject"] == -1).all(0)
        assert 0.05 < black.float().mean() < 0.95
        assert s["video"].shape == (8, 3, 64, 64)
        assert len(s["meta"]["boxes"]) == len(sample_spec(seed).objects)


def test_subject_video_inplace_subject_is_frame_0_with_only_the_subject():
    """subject_inplace: frame 0's pixels where the subject is visible, black elsewhere (pixel-aligned with frame 0,
    what MagDiff's HFA encodes)."""
    for seed in range(3):
        s = build_sample("subject_video", seed, size=64, frames=4)
        m = torch.from_numpy(render_clip(seed, 64, 4).masks[0, s["meta"]["object"]])
        inplace, frame0 = s["subject_inplace"], s["video"][0]
        assert inplace.shape == frame0.shape == (3, 64, 64) and m.any()
        assert torch.equal(inplace[:, m], frame0[:, m]) and bool((inplace[:, ~m] == -1).all())


def test_256px_and_512px():
    for task in TASKS:
        s = build_sample(task, 1, size=256, frames=3)
        validate_sample(s)
        key = "video" if task == "subject_video" else "target"
        assert s[key].shape[-2:] == (256, 256)
    s = build_sample("exemplar_inpaint", 2, size=512, frames=2, reference_size=224)
    validate_sample(s)
    assert s["target"].shape == (3, 512, 512) and s["reference"].shape == (3, 224, 224)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown toyworld task 'nope'.*exemplar_inpaint.*subject_video"):
        build_sample("nope", 0)
    with pytest.raises(ValueError, match="mask_kind"):
        build_sample("text_inpaint", 0, mask_kind="blob")
    with pytest.raises(ValueError, match="coarse_edit.*frames >= 2"):
        build_sample("coarse_edit", 0, frames=1)
    with pytest.raises(ValueError, match="split"):
        ToyWorldDataset("text_inpaint", split="holdout")


# ------------------------------------------------------------------------------------------- dataset
def test_dataset_splits():
    ranges = sorted(SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))  # disjoint
    assert SPLITS["benchmark"] == (1_002_000_000, 1_002_010_000)  # fixed forever
    assert len(ToyWorldDataset("text_inpaint", "val")) == 64
    assert len(ToyWorldDataset("text_inpaint", "test")) == 256
    assert len(ToyWorldDataset("text_inpaint", "benchmark")) == 200
    assert len(ToyWorldDataset("text_inpaint", "train", length=10)) == 10
    ds = ToyWorldDataset("exemplar_inpaint", "benchmark", size=32, frames=4)
    assert sample_digest(ds[3]) == sample_digest(build_sample("exemplar_inpaint", seed_of("benchmark", 3), size=32,
                                                               frames=4))
    with pytest.raises(IndexError):
        ds[200]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_edit)
    validate_sample(next(iter(loader)), batched=True)


# -------------------------------------------------------------------------------------------- export
def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_layout_and_byte_identical(tmp_path):
    from refedit.data.toyworld.export import export, rle_decode
    from refedit.data.toyworld.tasks import pick_object

    a, b = tmp_path / "a", tmp_path / "b"
    export(a, n=2, size=32, frames=3, progress=False)
    export(b, n=2, size=32, frames=3, progress=False)
    da, db = _tree_digest(a), _tree_digest(b)
    assert da == db
    ids = [f"{seed_of('benchmark', i):010d}" for i in range(2)]
    for sid in ids:
        for rel in (f"images/{sid}.png", f"videos/{sid}.mp4", f"videos/{sid}/frames/000002.png",
                    f"videos/masks/{sid}/000000.png", f"videos/instances/{sid}/000001.png",
                    f"videos/depth/{sid}/000000.npy", f"videos/flow/{sid}/000001.npy",
                    f"cocoee/GT/{sid}_GT.png", f"cocoee/Ref/{sid}_ref.png", f"cocoee/Mask/{sid}_mask.png"):
            assert rel in da, rel
        assert f"videos/flow/{sid}/000002.npy" not in da
    for rel in ("instances.json", "captions.jsonl", "videos/captions.jsonl", "cocoee/captions.jsonl", "manifest.json"):
        assert rel in da
    import cv2

    coco = json.loads((a / "instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(SHAPES)
    seed = seed_of("benchmark", 0)
    clip = render_clip(seed, 32, 3)
    anns = [x for x in coco["annotations"] if x["image_id"] == seed]
    img = cv2.cvtColor(cv2.imread(str(a / f"images/{ids[0]}.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(img, clip.rgb_u8[0].transpose(1, 2, 0))
    for ann in anns:
        k = ann["depth_order"]
        np.testing.assert_array_equal(rle_decode(ann["segmentation"]), clip.masks[0, k])
        x0, y0, x1, y1 = clip.boxes[0, k]
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert ann["category_id"] == clip.spec.objects[k].shape + 1
        assert ann["colour"] in COLOUR_NAMES and ann["caption"]
    mask = cv2.imread(str(a / f"cocoee/Mask/{ids[0]}_mask.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) <= {0, 255} and (mask == 255).any()
    s = build_sample("exemplar_inpaint", seed, size=32, frames=3)
    np.testing.assert_array_equal(mask == 255, s["mask"][0].numpy() > 0)
    subj = pick_object(clip, [0, 1, 2])
    sm = cv2.imread(str(a / f"videos/masks/{ids[0]}/000001.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(sm == 255, clip.masks[1, subj])
    rows = [json.loads(x) for x in (a / "videos/captions.jsonl").read_text().splitlines()]
    assert rows[0]["video"] == ids[0] and rows[0]["subject"] == subj + 1
    import av

    with av.open(str(a / f"videos/{ids[0]}.mp4")) as c:
        dec = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(dec) == 3 and dec[0].shape == (32, 32, 3)
    assert np.abs(dec[0].astype(int) - clip.rgb_u8[0].transpose(1, 2, 0)).mean() < 12  # lossy but the same clip


@pytest.mark.slow
def test_cli_preview_and_export(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "refedit.data.toyworld"]
    subprocess.run([*run, "preview", "--out", str(tmp_path / "s.png"), "--n", "1"], check=True, env=env)
    assert (tmp_path / "s.png").stat().st_size > 10_000
    subprocess.run([*run, "export", "--out", str(tmp_path / "e"), "--n", "2", "--size", "32", "--frames", "3"],
                   check=True, env=env, capture_output=True)
    assert (tmp_path / "e" / "instances.json").is_file()
