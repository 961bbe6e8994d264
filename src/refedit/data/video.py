"""Video folders: lazy PyAV readers (seek by time, decode only what is needed) and their sidecars.

Layout of a video root (the toyworld exporter writes exactly this under ``DIR/videos``)::

    root/<id>.mp4 | .webm | .mkv | .mov ...   one clip per file, and/or
    root/<id>/<frame>.png ...                 one clip per folder of frames, sorted by name, played at
    root/<id>/frames/<frame>.png ...          ``fps`` (either directly in the folder or in frames/);
                                              when both exist for an id, ``prefer`` picks one
    root/captions.jsonl           optional  {"video": "<id or file name>", "caption": "..."} per line
                                            ("id", "clip" or "file" accepted for the key)
    root/masks/<id>/<frame>.png   optional  subject mask, 255 = subject (0/1 and instance ids accepted)
    root/instances/<id>/<frame>.png  optional  instance ids, 0 = background, k = object k (segments for
                                               the piecewise-affine warp)
    root/depth/<id>/<frame>.npy|.png  optional  depth: ``depth_kind="inverse"`` (default; larger = nearer,
                                               e.g. [0, 1] with 1 = nearest, as MiDaS / Depth Anything and
                                               the toyworld export write) or ``"metric"`` (smaller = nearer);
                                               16-bit PNGs are multiplied by ``depth_scale``
    root/flow/<id>/<frame>.npy    optional  exact forward flow frame -> frame + 1, (2, H, W) or (H, W, 2) px

``<frame>`` is the 0-based index of the frame in the clip (any zero padding); every sidecar has the
clip's native frame size, anything else is bad data (:class:`~refedit.data.errors.MaskSizeError`).

Readers are opened lazily in the process that reads (a DataLoader worker), cached per process and
never pickled, so a dataset holding them is worker-safe. Scaling in PyAV's swscale runs on one thread:
its slice threads deadlock DataLoader workers forked after a decode.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from refedit.data.errors import CorruptFileError, MissingFileError
from refedit.data.io import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    list_files,
    read_depth,
    read_image,
    read_jsonl,
    read_label_map,
)
from refedit.utils.video import frame_to_rgb

SIDECAR_KINDS = ("masks", "instances", "depth", "flow")
OTHER_DIRS = ("captions", "meta", "frames")


def _scaled_hw(hw: tuple[int, int], shorter: int | None, longer: int | None) -> tuple[int, int]:
    h, w = hw
    if shorter is not None:
        s = shorter / min(h, w)
    elif longer is not None:
        s = longer / max(h, w)
    else:
        return h, w
    return max(1, round(h * s)), max(1, round(w * s))


# Readers a forked worker inherited from its parent: kept alive, never closed there (freeing FFmpeg state
# owned by the parent's threads can deadlock the child).
_INHERITED: list[Any] = []

class VideoReader:
    """Frames of one video file by time. Seeks to the keyframe before the first requested time and
    decodes forward; a later request close ahead (``seek_ahead`` s) keeps decoding instead of seeking."""

    def __init__(self, path: str | os.PathLike, *, threads: int = 1, seek_ahead: float = 1.0) -> None:
        self.path = Path(path)
        self.threads, self.seek_ahead = int(threads), float(seek_ahead)
        self._c: Any = None
        self._pid: int | None = None
        self._iter: Any = None
        self._last: tuple[float, Any] | None = None
        self.decoded = 0  # frames decoded by this process (seeking keeps it far below the clip length)

    # -- lifetime ---------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._c is not None and self._pid == os.getpid():
            return
        import av

        if not self.path.is_file():
            raise MissingFileError(self.path)
        if self._c is not None:  # opened by the parent before a fork: never free FFmpeg objects in the child
            _INHERITED.append((self._c, self._iter, self._last))
        self._c, self._iter, self._last = None, None, None
        try:
            c = av.open(str(self.path), "r")
        except (av.FFmpegError, OSError) as e:
            raise CorruptFileError(self.path, f"PyAV cannot open it: {e}") from e
        if not c.streams.video:
            c.close()
            raise CorruptFileError(self.path, "no video stream")
        st = c.streams.video[0]
        st.thread_type = "AUTO" if self.threads != 1 else "SLICE"
        st.codec_context.thread_count = self.threads
        self._c, self._st, self._pid = c, st, os.getpid()
        tb = float(st.time_base)
        rate = st.average_rate or st.guessed_rate or st.base_rate
        if not rate:
            raise CorruptFileError(self.path, "unknown frame rate")
        self.fps = float(rate)
        self.start = float(st.start_time * tb) if st.start_time is not None else 0.0
        if st.duration:
            dur = float(st.duration * tb)
        elif c.duration:
            dur = c.duration / 1e6 - self.start
        else:
            raise CorruptFileError(self.path, "unknown duration")
        self.num_frames = int(st.frames) if st.frames else max(1, int(round(dur * self.fps)))
        self.height, self.width = st.codec_context.height, st.codec_context.width
        if not (self.height and self.width):
            raise CorruptFileError(self.path, "video stream has no frame size")

    def close(self) -> None:
        if self._c is not None and self._pid == os.getpid():
            self._c.close()
        self._c, self._iter, self._last, self._pid = None, None, None, None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "threads": self.threads, "seek_ahead": self.seek_ahead, "_c": None,
                "_pid": None, "_iter": None, "_last": None, "decoded": 0}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- metadata ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        self._open()
        return {"fps": self.fps, "num_frames": self.num_frames, "duration": self.num_frames / self.fps,
                "height": self.height, "width": self.width}

    @property
    def duration(self) -> float:
        """Time span covered by the frame starts: the last frame is at ``duration - 1 / fps``."""
        self._open()
        return self.num_frames / self.fps

    # -- decoding ---------------------------------------------------------------------------------
    def _seek(self, t_abs: float) -> None:
        self._c.seek(int(t_abs / float(self._st.time_base)), stream=self._st, backward=True, any_frame=False)
        self._iter = self._c.decode(self._st)
        self._last = None

    def _frame_at(self, t_abs: float):
        half = 0.5 / self.fps
        if self._last is not None and abs(self._last[0] - t_abs) < half:
            return self._last[1]
        if self._iter is None or self._last is None or t_abs < self._last[0] or t_abs - self._last[0] > self.seek_ahead:
            self._seek(t_abs)
        prev = self._last
        for fr in self._iter:
            self.decoded += 1
            ft = float(fr.time) if fr.time is not None else (prev[0] + 1 / self.fps if prev else self.start)
            self._last = (ft, fr)
            if ft >= t_abs - half:
                return fr
            prev = self._last
        if self._last is not None and t_abs - self._last[0] <= 1.5 / self.fps:
            return self._last[1]  # asked for (about) the last frame
        raise CorruptFileError(self.path, f"no frame at t={t_abs - self.start:.3f}s (decoded up to "
                                          f"{'nothing' if self._last is None else f'{self._last[0]:.3f}s'})")

    def read(self, times: Sequence[float], *, shorter: int | None = None, longer: int | None = None,
             hw: tuple[int, int] | None = None) -> tuple[np.ndarray, list[int]]:
        """RGB uint8 (F, H, W, 3) at ``times`` (seconds from the first frame) and the frame indices.

        ``shorter``/``longer`` resize keeping the aspect ratio, ``hw`` to a fixed size (area filter,
        done by swscale while converting)."""
        import av

        self._open()
        oh, ow = hw if hw is not None else _scaled_hw((self.height, self.width), shorter, longer)
        order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
        out: list[Any] = [None] * len(times)
        idx: list[int] = [0] * len(times)
        try:
            for k in order:
                t = min(max(float(times[k]), 0.0), (self.num_frames - 1) / self.fps)
                fr = self._frame_at(self.start + t)
                ft = float(fr.time) if fr.time is not None else self.start + t
                idx[k] = int(round((ft - self.start) * self.fps))
                out[k] = frame_to_rgb(fr, oh, ow)
        except av.FFmpegError as e:
            self._iter = None
            raise CorruptFileError(self.path, f"decoding failed: {e}") from e
        return np.stack(out), idx


class FrameFolderReader:
    """A clip stored as a folder of images; time ``t`` maps to frame ``round(t * fps)``."""

    def __init__(self, path: str | os.PathLike, *, fps: float = 24.0) -> None:
        self.path, self.fps = Path(path), float(fps)
        self._files: list[Path] | None = None

    def _list(self) -> list[Path]:
        if self._files is None:
            if not self.path.is_dir():
                raise MissingFileError(self.path)
            self._files = list_files(self.path, IMAGE_EXTS)
            if not self._files:
                raise CorruptFileError(self.path, "frame folder holds no image")
        return self._files

    @property
    def num_frames(self) -> int:
        return len(self._list())

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def info(self) -> dict[str, Any]:
        h, w = read_image(self._list()[0]).shape[:2]
        return {"fps": self.fps, "num_frames": self.num_frames, "duration": self.duration, "height": h, "width": w}

    def read(self, times: Sequence[float], *, shorter: int | None = None, longer: int | None = None,
             hw: tuple[int, int] | None = None) -> tuple[np.ndarray, list[int]]:
        files = self._list()
        idx = [int(min(max(round(float(t) * self.fps), 0), len(files) - 1)) for t in times]
        frames = []
        for i in idx:
            img = read_image(files[i])
            if frames and img.shape != frames[0].shape[:2] + (3,) and hw is None and shorter is None \
                    and longer is None:
                raise CorruptFileError(files[i], f"frame size {img.shape[1::-1]} differs from the first frame's")
            th, tw = hw if hw is not None else _scaled_hw(img.shape[:2], shorter, longer)
            if (th, tw) != img.shape[:2]:
                interp = cv2.INTER_AREA if th < img.shape[0] else cv2.INTER_LINEAR
                img = cv2.resize(img, (tw, th), interpolation=interp)
            frames.append(img)
        return np.stack(frames), idx

    def close(self) -> None:
        pass


class ReaderCache:
    """Per-process LRU of open readers; rebuilt empty after a fork or unpickling (workers open their own)."""

    def __init__(self, max_open: int = 8, threads: int = 1, fps: float = 24.0) -> None:
        self.max_open, self.threads, self.fps = int(max_open), int(threads), float(fps)
        self._readers: OrderedDict[str, Any] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open, "threads": self.threads, "fps": self.fps, "_readers": OrderedDict(),
                "_pid": None}

    def get(self, entry: VideoEntry) -> VideoReader | FrameFolderReader:
        if self._pid != os.getpid():
            if self._readers:
                _INHERITED.append(self._readers)
            self._readers, self._pid = OrderedDict(), os.getpid()
        key = str(entry.path)
        r = self._readers.pop(key, None)
        if r is None:
            r = FrameFolderReader(entry.path, fps=self.fps) if entry.kind == "frames" else \
                VideoReader(entry.path, threads=self.threads)
        self._readers[key] = r
        while len(self._readers) > self.max_open:
            _, old = self._readers.popitem(last=False)
            old.close()
        return r

    def drop(self, entry: VideoEntry) -> None:
        r = self._readers.pop(str(entry.path), None)
        if r is not None:
            r.close()


@dataclass
class VideoEntry:
    id: str
    path: Path
    kind: str  # "file" | "frames"
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_INT = re.compile(r"(\d+)$")


def _frame_dir(p: Path) -> Path | None:
    for d in (p, p / "frames"):
        if d.is_dir() and any(q.suffix.lower() in IMAGE_EXTS for q in d.iterdir()):
            return d
    return None


class VideoFolder:
    """Index of a video root (layout in the module docstring); nothing is decoded here."""

    def __init__(self, root: str | os.PathLike, *, captions: str | None = "captions.jsonl", fps: float = 24.0,
                 prefer: str = "file", depth_kind: str = "inverse", depth_scale: float = 1.0 / 1000.0,
                 exts: Sequence[str] = VIDEO_EXTS, sidecars: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(self.root, "video root is not a folder")
        if prefer not in ("file", "frames"):
            raise ValueError(f"prefer must be 'file' or 'frames', got {prefer!r}")
        if depth_kind not in ("inverse", "metric"):
            raise ValueError(f"depth_kind must be 'inverse' or 'metric', got {depth_kind!r}")
        self.dirs = {k: self.root / (sidecars or {}).get(k, k) for k in SIDECAR_KINDS}
        self.fps, self.depth_kind, self.depth_scale = float(fps), depth_kind, float(depth_scale)
        skip = {d.name for d in self.dirs.values()} | set(OTHER_DIRS)
        exts_l = tuple(e.lower() for e in exts)
        found: dict[str, dict[str, VideoEntry]] = {}
        for p in sorted(self.root.iterdir()):
            if p.is_file() and p.suffix.lower() in exts_l:
                found.setdefault(p.stem, {})["file"] = VideoEntry(p.stem, p, "file")
            elif p.is_dir() and p.name not in skip and (d := _frame_dir(p)) is not None:
                found.setdefault(p.name, {})["frames"] = VideoEntry(p.name, d, "frames")
        other = "frames" if prefer == "file" else "file"
        entries = [kinds.get(prefer) or kinds[other] for _, kinds in sorted(found.items())]
        if not entries:
            raise MissingFileError(self.root, f"no video file ({', '.join(exts)}) or frame folder")
        caps: dict[str, str] = {}
        if captions and (self.root / captions).is_file():
            for row in read_jsonl(self.root / captions):
                key = next((row[k] for k in ("video", "id", "clip", "file") if k in row), None)
                if key is not None:
                    caps[str(key)] = str(row.get("caption", ""))
        for e in entries:
            e.caption = caps.get(e.id, caps.get(e.path.name))
        self.entries = entries
        self._sidecar_cache: dict[tuple[str, str], dict[int, Path]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _frames_in(self, kind: str, entry: VideoEntry) -> dict[int, Path]:
        key = (kind, entry.id)
        if key not in self._sidecar_cache:
            d = self.dirs[kind] / entry.id
            found: dict[int, Path] = {}
            if d.is_dir():
                for p in d.iterdir():
                    m = _INT.search(p.stem)
                    if m and p.suffix.lower() in (*IMAGE_EXTS, ".npy"):
                        found[int(m.group(1))] = p
            self._sidecar_cache[key] = found
        return self._sidecar_cache[key]

    def has_sidecar(self, kind: str, entry: VideoEntry) -> bool:
        return bool(self._frames_in(kind, entry))

    def sidecar(self, kind: str, entry: VideoEntry, frame: int) -> Path | None:
        return self._frames_in(kind, entry).get(int(frame))

    def expected_sidecar(self, kind: str, entry: VideoEntry, frame: int) -> Path:
        ext = ".npy" if kind == "flow" else ".png"
        return self.dirs[kind] / entry.id / f"{frame:06d}{ext}"

    def read_sidecar(self, kind: str, path: Path) -> np.ndarray:
        """masks / instances: int label map; depth: float (H, W) in the batch polarity (larger = nearer);
        flow: float (H, W, 2)."""
        if kind in ("masks", "instances"):
            return read_label_map(path)
        if kind == "depth":
            d = read_depth(path, self.depth_scale)
            if self.depth_kind == "metric":  # -> inverse polarity in (0, 1], 1 = nearest
                d = float(d[d > 0].min() if (d > 0).any() else 1.0) / np.maximum(d, 1e-6)
            return np.clip(d, 0, None).astype(np.float32)
        if kind == "flow":
            try:
                f = np.load(path).astype(np.float32)
            except (ValueError, OSError, EOFError) as e:
                raise CorruptFileError(path, str(e)) from e
            if f.ndim == 3 and f.shape[0] == 2 and f.shape[-1] != 2:
                f = f.transpose(1, 2, 0)
            if f.ndim != 3 or f.shape[-1] != 2 or not np.isfinite(f).all():
                raise CorruptFileError(path, f"flow must be finite (2, H, W) or (H, W, 2), got {f.shape}")
            return np.ascontiguousarray(f)
        raise ValueError(f"unknown sidecar kind {kind!r}; known: {SIDECAR_KINDS}")
