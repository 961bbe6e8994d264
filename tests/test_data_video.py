"""Video folders: seeking readers, frame pairs, coarse-edit pairs, subject clips, and their bad data."""

from __future__ import annotations

import json
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from refedit.batch import collate_edit, validate_sample
from refedit.data.errors import (
    BadDataWarning,
    CorruptFileError,
    MaskSizeError,
    VideoTooShortError,
)
from refedit.data.io import write_image, write_mask, write_video
from refedit.data.pairs import (
    FlowMagnitudeFilter,
    FlowPercentileFilter,
    SSIMBand,
    ValidFractionFilter,
    VideoClips,
    VideoCoarsePairs,
    VideoFramePairs,
    sample_pair_times,
)
from refedit.data.synthetic import write_video_folder
from refedit.data.video import FrameFolderReader, VideoFolder, VideoReader


def _counter_frames(n, hw=(64, 96)):
    """Frame i shows i in two grey blocks (4 x (i // 60) on the left, 4 x (i % 60) on the right), robust to
    the codec's +-1 level error, so the decoded frame's index can be read back."""
    out = np.zeros((n, *hw, 3), np.uint8)
    half = hw[1] // 2
    for i in range(n):
        out[i, :, :half] = 4 * (i // 60)
        out[i, :, half:] = 4 * (i % 60)
    return out


def _index_of(frame):
    half = frame.shape[1] // 2
    hi = round(float(np.median(frame[4:-4, 4: half - 4])) / 4)
    lo = round(float(np.median(frame[4:-4, half + 4: -4])) / 4)
    return 60 * hi + lo


@pytest.fixture(scope="module")
def vroot(tmp_path_factory):
    return write_video_folder(tmp_path_factory.mktemp("videos"), videos=3, size=(96, 128), frames=48, fps=24)


@pytest.mark.parametrize(("ext", "codec"), [(".mp4", "libx264"), (".webm", "libvpx-vp9")])
def test_reader_seeks_by_time_to_the_right_frame(tmp_path, ext, codec):
    frames = _counter_frames(120)
    write_video(tmp_path / f"c{ext}", frames, fps=24, codec=codec, crf=4, gop=12)
    r = VideoReader(tmp_path / f"c{ext}")
    info = r.info()
    assert info["num_frames"] == 120 and info["fps"] == 24 and (info["height"], info["width"]) == (64, 96)
    times = [4.5, 0.0, 119 / 24, 1.0, 1.0 + 1 / 24, 2.49]
    got, idx = r.read(times)
    assert idx == [108, 0, 119, 24, 25, 60]
    assert [_index_of(f) for f in got] == idx
    small, _ = r.read([0.5], shorter=32)
    assert small.shape == (1, 32, 48, 3)


def test_reader_decodes_only_near_the_requested_time(tmp_path):
    write_video(tmp_path / "long.mp4", _counter_frames(240, (32, 32)), fps=24, gop=12)
    r = VideoReader(tmp_path / "long.mp4")
    frames, idx = r.read([9.0])
    assert idx == [216] and _index_of(frames[0]) == 216
    assert r.decoded <= 24, r.decoded  # a seek + at most two GOPs, not the 217 frames before it
    clone = pickle.loads(pickle.dumps(r))  # worker-safe: the container is not pickled, reopened lazily
    assert clone._c is None and _index_of(clone.read([1.0])[0][0]) == 24


def test_corrupt_and_missing_videos_raise_data_errors_naming_the_file(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(CorruptFileError, match="bad.mp4"):
        VideoReader(tmp_path / "bad.mp4").info()
    with pytest.raises(Exception, match="missing file: .*none.mp4"):
        VideoReader(tmp_path / "none.mp4").read([0.0])


def test_frame_folder_reader(tmp_path):
    frames = _counter_frames(10)
    for i, f in enumerate(frames):
        write_image(tmp_path / "clip" / f"{i:04d}.png", f)
    r = FrameFolderReader(tmp_path / "clip", fps=5)
    assert r.num_frames == 10 and r.duration == 2.0
    got, idx = r.read([0.0, 1.0, 1.79])
    assert idx == [0, 5, 9]
    np.testing.assert_array_equal(got[1], frames[5])  # PNG frames: exact


def test_video_folder_index_and_sidecars(vroot):
    folder = VideoFolder(vroot)
    assert [e.id for e in folder.entries] == ["clip0", "clip1", "clip2"]
    assert folder.entries[1].caption == "a textured square number 1"
    assert folder.sidecar("masks", folder.entries[0], 7).name == "000007.png"
    assert folder.sidecar("depth", folder.entries[0], 7) is None


def test_pair_times_respect_the_gap_and_short_clips_raise():
    rng = np.random.default_rng(0)
    for _ in range(200):
        t0, t1 = sample_pair_times(48, 24, rng, 0.5, 1.5)
        assert 0.5 - 1e-9 <= abs(t1 - t0) <= 1.5 + 1e-9 and 0 <= min(t0, t1) and max(t0, t1) <= 47 / 24 + 1e-9
    with pytest.raises(VideoTooShortError, match="short.mp4"):
        sample_pair_times(10, 24, rng, 1.0, 2.0, path="short.mp4")


def test_frame_pairs_schema_determinism_and_workers(vroot):
    ds = VideoFramePairs(vroot, size=64, min_gap=0.5, max_gap=1.5, samples_per_video=2, seed=7)
    assert len(ds) == 6
    s = ds[3]
    validate_sample(s)
    assert set(s) == {"source", "reference", "target", "mask", "caption", "meta"}
    assert torch.equal(s["source"], s["target"]) and not torch.equal(s["source"], s["reference"])
    assert 0.5 <= s["meta"]["gap"] <= 1.5 and s["meta"]["video"] == "clip1"
    assert s["caption"] == "a textured square number 1"
    again = VideoFramePairs(vroot, size=64, min_gap=0.5, max_gap=1.5, samples_per_video=2, seed=7)
    serial = [again[i] for i in range(6)]
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_edit)
    parallel = [b for b in loader]
    for k in range(6):
        # worker processes vs the main one: the same sample, bit for bit
        assert torch.equal(parallel[k // 2]["source"][k % 2], serial[k]["source"])
        assert torch.equal(parallel[k // 2]["mask"][k % 2], serial[k]["mask"])
    other = VideoFramePairs(vroot, size=64, min_gap=0.5, max_gap=1.5, seed=8)[0]
    assert other["meta"]["times"] != again[0]["meta"]["times"]


def test_frame_pairs_mask_options_and_depth(vroot, tmp_path):
    assert "mask" not in VideoFramePairs(vroot, size=32, mask="none")[0]
    box = VideoFramePairs(vroot, size=32, mask="box", box_scale=(0.5, 0.5))[0]["mask"]
    assert box.sum() == 16 * 16
    root = tmp_path / "v"
    shutil.copytree(vroot, root)
    for i in range(48):
        (root / "depth" / "clip0").mkdir(parents=True, exist_ok=True)
        np.save(root / "depth" / "clip0" / f"{i:06d}.npy", np.full((96, 128), 1.0 + i, np.float32))
    ds = VideoFramePairs(root, size=32, with_depth=True)
    s = ds[0]
    assert s["depth"].shape == (1, 32, 32) and s["depth"][0, 0, 0] == 1 + s["meta"]["frames"][0]
    with pytest.warns(BadDataWarning) as rec:
        assert ds[1]["meta"]["video"] == "clip0"  # clip1 has no depth: skipped, clip0 comes through
    assert any(re.search(r"depth/clip1/000\d+\.png: missing file", str(w.message)) for w in rec)


def test_ssim_band_rejects_static_pairs_without_warning_and_counts_them(tmp_path, vroot):
    root = tmp_path / "v"
    shutil.copytree(vroot, root)
    still = np.full((20, 96, 128, 3), 90, np.uint8)
    write_video(root / "static.mp4", still, fps=24)
    ds = VideoFramePairs(root, size=32, min_gap=0.2, max_gap=0.5, filters=[SSIMBand(0.0, 0.98)], mask="none")
    i_static = [e.id for e in ds.folder.entries].index("static")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", BadDataWarning)
        s = ds[i_static]
    assert s["meta"]["video"] != "static"
    assert ds.bad_samples_summary()["by_reason"] == {"every sampled pair rejected by the filters": 1}
    assert SSIMBand().score(still[0], still[1]) == pytest.approx(1.0)


def test_short_corrupt_videos_and_bad_masks_are_skipped_with_the_file_named(tmp_path, vroot):
    root = tmp_path / "v"
    shutil.copytree(vroot, root)
    write_video(root / "short.mp4", _counter_frames(6, (96, 128)), fps=24)
    (root / "broken.mp4").write_bytes(b"\x1aE\xdf\xa3 garbage")
    ds = VideoFramePairs(root, size=32, min_gap=1.0, max_gap=1.5, mask="none")
    names = [e.path.name for e in ds.folder.entries]
    with pytest.warns(BadDataWarning) as rec:
        got = [ds[i]["meta"]["video"] for i in range(len(ds))]
    msgs = " | ".join(str(w.message) for w in rec)
    assert "short.mp4: video shorter than the requested gap" in msgs
    assert "broken.mp4: corrupt or unreadable file" in msgs
    for i, n in enumerate(names):  # the good clips still come through, in place
        if n.startswith("clip"):
            assert got[i] == n[:-4]
    summary = ds.bad_samples_summary()
    assert summary["files"] == 2 and summary["skipped"] >= 2
    with pytest.raises(VideoTooShortError, match="short.mp4"):
        VideoFramePairs(root, size=32, min_gap=1.0, on_error="raise")[names.index("short.mp4")]
    # subject masks of another size than the frames
    for i in range(48):
        write_mask(root / "masks" / "clip2" / f"{i:06d}.png", np.ones((50, 50), bool))
    clips = VideoClips(root, size=32, num_frames=4, clip_fps=2.0)
    with pytest.warns(BadDataWarning, match=r"masks/clip2/0000\d\d\.png: mask size differs.*\(50, 50\) vs video"):
        s = clips[names.index("clip2.mp4")]
    assert s["meta"]["video"] in ("clip0", "clip1")
    with pytest.raises(MaskSizeError, match=r"clip2/0000\d\d\.png"):
        VideoClips(root, size=32, num_frames=4, on_error="raise")[names.index("clip2.mp4")]


def test_coarse_pairs_warp_source_towards_target(vroot):
    for motion in ("flow", "piecewise_affine"):
        ds = VideoCoarsePairs(vroot, size=64, min_gap=0.5, max_gap=1.0, motion=motion, flow_hops=2,
                              filters=[FlowMagnitudeFilter(), ValidFractionFilter(0.5)])
        s = ds[0]
        validate_sample(s)
        assert set(s) == {"source", "reference", "coarse", "valid", "target", "mask", "caption", "meta"}
        assert s["meta"]["motion"] == motion and torch.equal(s["source"], s["reference"])
        v = s["valid"][0].bool()
        assert 0.5 < v.float().mean() < 1.0  # the pan and the object open holes
        err_coarse = (s["coarse"] - s["target"]).abs().mean(0)[v].mean()
        err_still = (s["source"] - s["target"]).abs().mean(0)[v].mean()
        assert err_coarse < 0.5 * err_still, (motion, float(err_coarse), float(err_still))
        assert (s["mask"][0].bool() | v).all()  # every hole is in the edit mask
        assert s["mask"].mean() < 0.9
    assert ds[0]["meta"]["segments"] == "masks"  # segments from the mask sidecar


def test_flow_filters_reject_large_or_small_motion(vroot):
    ds = VideoCoarsePairs(vroot, size=64, min_gap=0.5, max_gap=1.0, motion="flow", flow_hops=1, max_tries=2,
                          filters=[FlowMagnitudeFilter(threshold_px=0.5, max_fraction=0.1)])
    with pytest.raises(Exception, match="every sampled pair rejected"):
        VideoCoarsePairs(vroot, size=64, min_gap=0.5, max_gap=1.0, max_tries=2, on_error="raise",
                         filters=[FlowPercentileFilter(q=50, min_px=500)])[0]
    with pytest.raises(Exception, match="TooMany|consecutive"):
        ds[0]


def test_clips_subject_cutout_and_caption(vroot):
    ds = VideoClips(vroot, size=64, num_frames=5, clip_fps=8.0, subject_size=32)
    s = ds[2]
    validate_sample(s)
    assert s["video"].shape == (5, 3, 64, 64) and s["subject"].shape == (3, 32, 32)
    assert s["caption"] == "a textured square number 2"
    fr = s["meta"]["frames"]
    assert all(b - a == 3 for a, b in zip(fr, fr[1:]))  # 24 fps native, 8 fps sampled
    subj = s["subject"]
    assert (subj[:, 0, 0] == -1).all()  # black around the subject
    assert (subj[:, 16, 16] != -1).any()
    # the same cut-out left in place: frame 0 where the subject is, black elsewhere (aligned with the frame)
    inplace, frame0 = s["subject_inplace"], s["video"][0]
    keep = (inplace != -1).any(0)
    assert inplace.shape == (3, 64, 64) and 0 < keep.float().mean() < 1
    assert torch.equal(inplace[:, keep], frame0[:, keep])
    (vroot / "captions.jsonl").rename(vroot / "captions.bak")
    try:
        assert VideoClips(vroot, size=32, num_frames=2)[0]["caption"] == ""
    finally:
        (vroot / "captions.bak").rename(vroot / "captions.jsonl")
    rows = [json.loads(x) for x in (vroot / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 3
