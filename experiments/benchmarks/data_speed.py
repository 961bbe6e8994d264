"""Throughput of the real-data pipelines on one core.

Writes a temporary folder of 256 px H.264 MP4 clips (PyAV) and a COCO-format folder of 640x480 JPEGs, then
prints `name: value` lines:

  frame_pairs_per_s_per_core      VideoFramePairs at 256 px: two frames of a clip 0.5-3 s apart, decoded by
                                  seeking (no full-clip decode), no filter, no mask
  frame_pairs_ssim_grid_per_s_per_core   the same with the SSIM band and the SIFT-matched grid mask (MimicBrush)
  coarse_pairs_per_s_per_core     VideoCoarsePairs at 256 px: DIS flow over 4 hops + warp (Magic Fixup)
  boxed_samples_per_s_per_core    SelfReferenceDataset over CocoBoxes at 512 px: JPEG decode, reference crop +
                                  kornia augmentation at 224 px, Bezier / box mask, square crop and resize

Rates use this process's CPU time (torch, OpenCV and PyAV on one thread), so they are per core and
insensitive to neighbours on a shared machine; wall-clock rates are printed alongside for reference.
Run: OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python experiments/benchmarks/data_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from refedit.data.boxes import CocoBoxes  # noqa: E402
from refedit.data.io import write_video  # noqa: E402
from refedit.data.pairs import SSIMBand, VideoCoarsePairs, VideoFramePairs  # noqa: E402
from refedit.data.self_reference import SelfReferenceDataset  # noqa: E402
from refedit.data.synthetic import moving_square_clip, write_coco_folder  # noqa: E402


def make_videos(root: Path, n: int, seconds: float, fps: float = 24.0, size: int = 256) -> None:
    frames = int(seconds * fps)
    for k in range(n):
        clip, _, _ = moving_square_clip((size, size), frames, seed=k, obj=64, velocity=(1.0, 0.5), pan=(0, 1))
        write_video(root / f"clip{k}.mp4", clip, fps=fps, crf=18, gop=48)


def rate(ds, n: int) -> tuple[float, float]:
    """Samples per CPU second and per wall second over n samples (after one warm-up sample)."""
    ds[0]
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.process_time() - c0), n / (time.perf_counter() - w0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer clips, images and samples")
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    n_vid, secs, n_pairs, n_img, n_box = (3, 6.0, 60, 8, 40) if args.quick else (8, 10.0, 400, 32, 200)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_videos(tmp / "videos", n_vid, secs)
        write_coco_folder(tmp / "coco", images=n_img, size=(480, 640), ext=".jpg", boxes_per_image=3)
        results: dict[str, tuple[float, float]] = {}
        pairs = VideoFramePairs(tmp / "videos", size=256, min_gap=0.5, max_gap=3.0, mask="none",
                                samples_per_video=1000)
        results["frame_pairs_per_s_per_core"] = rate(pairs, n_pairs)
        mimic = VideoFramePairs(tmp / "videos", size=256, min_gap=0.5, max_gap=3.0, filters=[SSIMBand(0.0, 1.0)],
                                mask="grid", keypoints="sift", samples_per_video=1000)
        results["frame_pairs_ssim_grid_per_s_per_core"] = rate(mimic, max(10, n_pairs // 4))
        coarse = VideoCoarsePairs(tmp / "videos", size=256, min_gap=1.0, max_gap=5.0, flow_hops=4,
                                  samples_per_video=1000)
        results["coarse_pairs_per_s_per_core"] = rate(coarse, max(10, n_pairs // 8))
        boxed = SelfReferenceDataset(CocoBoxes(tmp / "coco" / "instances.json", tmp / "coco" / "images"),
                                     size=512, reference_size=224)
        results["boxed_samples_per_s_per_core"] = rate(boxed, n_box)
    for name, (cpu, wall) in results.items():
        print(f"{name}: {cpu:.1f}")
        print(f"{name.replace('_per_core', '')}_wall: {wall:.1f}")
    skipped = sum(d.bad_samples_summary()["skipped"] for d in (pairs, mimic, coarse, boxed))
    print(f"skipped_samples: {skipped}")
    print(f"setup: {n_vid} clips x {secs:g} s at 24 fps, 256x256 H.264; {n_img} JPEGs 640x480; "
          f"torch threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
