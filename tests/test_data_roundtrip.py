"""Round trip: toyworld's exporter writes real files (PNG, MP4, COCO JSON, COCOEE folder, sidecars) and the
real-data loaders read back the same boxes, masks, captions and frames (PNG exactly, MP4 within codec error)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refedit.data.benchmarks import CocoEEBenchmark
from refedit.data.boxes import CocoBoxes
from refedit.data.io import tensor_to_image
from refedit.data.pairs import VideoClips, VideoCoarsePairs, VideoFramePairs
from refedit.data.self_reference import SelfReferenceDataset
from refedit.data.toyworld import export as export_mod
from refedit.data.toyworld import render, tasks
from refedit.data.video import FrameFolderReader, VideoFolder, VideoReader

SIZE, FRAMES, N = 128, 8, 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyworld_export")
    manifest = export_mod.export(root, n=N, size=SIZE, frames=FRAMES, progress=False)
    return root, manifest


def _clip(seed: int):
    clip = render.render_clip(seed, SIZE, FRAMES)
    return clip, clip.rgb_u8.transpose(0, 2, 3, 1)


def test_coco_json_and_png_images_round_trip_exactly(exported):
    root, _ = exported
    ds = CocoBoxes(root / "instances.json", min_area=0.0, max_area=1.0)  # file_name is relative to the JSON
    assert len(ds) == N
    names = render.SHAPES
    for i in range(N):
        item = ds.load(i)
        clip, rgb = _clip(int(item["image_id"]))
        np.testing.assert_array_equal(item["image"], rgb[0])  # PNG: exact
        visible = [k for k in range(len(clip.spec.objects)) if clip.masks[0, k].any()]
        np.testing.assert_array_equal(item["boxes"], clip.boxes[0][visible].astype(np.float32))
        assert item["categories"] == [names[clip.spec.objects[k].shape] for k in visible]
    pbe = SelfReferenceDataset(ds, size=64, reference_size=32, seed=0)
    s = pbe[0]
    assert s["caption"] in names and s["meta"]["source_box"] in ds.load(0)["boxes"].tolist()


def test_cocoee_folder_round_trips_exactly(exported):
    root, manifest = exported
    ds = CocoEEBenchmark(root / "cocoee", size=SIZE, reference_size=manifest["reference_size"])
    assert len(ds) == N and ds.bad_samples_summary()["files"] == 0
    for i in range(N):
        s = ds[i]
        ref = tasks.build_sample("exemplar_inpaint", int(s["meta"]["id"]), size=SIZE, frames=FRAMES)
        for k in ("target", "reference"):
            np.testing.assert_array_equal(tensor_to_image(s[k]), tensor_to_image(ref[k]))
        np.testing.assert_array_equal(s["mask"].numpy(), ref["mask"].numpy())
        assert s["caption"] == ref["caption"] != ""


def test_png_frame_folders_round_trip_exactly(exported):
    root, _ = exported
    folder = VideoFolder(root / "videos", fps=8, prefer="frames")
    assert [e.kind for e in folder.entries] == ["frames"] * N
    for e in folder.entries:
        _, rgb = _clip(int(e.id))
        frames, idx = FrameFolderReader(e.path, fps=8).read([f / 8 for f in range(FRAMES)])
        assert idx == list(range(FRAMES))
        np.testing.assert_array_equal(frames, rgb)


def test_mp4_clips_round_trip_within_codec_error(exported):
    root, manifest = exported
    folder = VideoFolder(root / "videos")
    assert [e.kind for e in folder.entries] == ["file"] * N
    for e in folder.entries:
        _, rgb = _clip(int(e.id))
        reader = VideoReader(e.path)
        assert reader.info()["num_frames"] == FRAMES and reader.info()["fps"] == manifest["fps"]
        order = [5, 0, 7, 3]  # by time, out of order: every seek lands on its own frame
        frames, idx = reader.read([f / manifest["fps"] for f in order])
        assert idx == order
        err = np.abs(frames.astype(np.float32) - rgb[order]).mean(axis=(1, 2, 3))
        assert (err <= 2.0).all(), err  # mean abs error in 8-bit levels: <= 2/255
        wrong = np.abs(frames[:1].astype(np.float32) - rgb[6]).mean()
        assert wrong > err[0]  # and the neighbours really differ


def test_masks_depth_and_captions_sidecars_round_trip(exported):
    root, _ = exported
    rows = {r["video"]: r for r in map(json.loads, (root / "videos" / "captions.jsonl").read_text().splitlines())}
    folder = VideoFolder(root / "videos", fps=8)
    clips = VideoClips(root / "videos", size=SIZE, num_frames=FRAMES, fit="resize", fps=8, prefer="frames")
    pairs = VideoFramePairs(root / "videos", size=SIZE, fit="resize", min_gap=0.25, max_gap=0.5, mask="none",
                            with_depth=True, fps=8, prefer="frames")
    for i, e in enumerate(folder.entries):
        clip, rgb = _clip(int(e.id))
        subject = rows[e.id]["subject"] - 1
        for f in range(FRAMES):
            m = folder.read_sidecar("masks", folder.sidecar("masks", e, f)) > 0
            np.testing.assert_array_equal(m, clip.masks[f, subject])
            inst = folder.read_sidecar("instances", folder.sidecar("instances", e, f))
            np.testing.assert_array_equal(inst, clip.owner[f].astype(np.int32) + 1)
        s = clips[i]
        assert s["caption"] == clip.captions()[subject] == e.caption
        np.testing.assert_array_equal(np.stack([tensor_to_image(v) for v in s["video"]]), rgb)
        np.testing.assert_array_equal(s["meta"]["subject_box"], clip.boxes[0, subject])
        cut = tensor_to_image(s["subject"])
        assert cut[0, 0].tolist() == [0, 0, 0]  # on black
        p = pairs[i]
        f0 = p["meta"]["frames"][0]
        inv = np.clip((render.Z_FAR - clip.depth[f0]) / (render.Z_FAR - render.Z_NEAR), 0, 1)
        np.testing.assert_array_equal(p["depth"][0].numpy(), inv)  # .npy: exactly what the exporter stored
        np.testing.assert_array_equal(tensor_to_image(p["source"]), rgb[f0])


def test_coarse_pairs_from_exported_exact_flow(exported):
    """The per-frame flow sidecars, composed by the loader over s..t, warp as well as the renderer's direct
    exact flow s -> t (what remains is shading and shadows, which no flow carries)."""
    from refedit.data.warp import forward_splat

    root, _ = exported
    ds = VideoCoarsePairs(root / "videos", size=SIZE, fit="resize", min_gap=0.25, max_gap=0.5, motion="flow",
                          fps=8, prefer="frames")
    for i in range(N):
        s = ds[i]
        assert s["meta"]["flow"] == "sidecar"
        a, b = s["meta"]["frames"]
        assert b > a
        clip, rgb = _clip(int(ds.folder.entries[i].id))
        np.testing.assert_array_equal(tensor_to_image(s["target"]), rgb[b])
        np.testing.assert_array_equal(tensor_to_image(s["source"]), rgb[a])
        v = s["valid"][0].numpy() > 0
        coarse = tensor_to_image(s["coarse"]).astype(np.float32)
        direct, dv = forward_splat(rgb[a], clip.flow(a, b).transpose(1, 2, 0), depth=clip.depth[a])
        err = np.abs(coarse - rgb[b]).mean(-1)[v].mean()
        err_direct = np.abs(direct.astype(np.float32) - rgb[b]).mean(-1)[dv].mean()
        still = np.abs(rgb[a].astype(np.float32) - rgb[b]).mean(-1)[v].mean()
        assert v.mean() > 0.8 and err <= err_direct + 0.5 and err < still, (err, err_direct, still)
        same = (np.abs(coarse - direct).max(-1) == 0) & v & dv
        assert same.mean() > 0.75, same.mean()  # nearest-pixel rounding of composed vs direct flow
