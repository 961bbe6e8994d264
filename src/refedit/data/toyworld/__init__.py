"""toyworld: the procedural default dataset (scenes and clips with exact ground truth, see render.py),
its task builders (tasks.py), the index -> seed dataset (dataset.py) and the disk export (export.py).

CLI: ``python -m refedit.data.toyworld {preview,export} ...``.
"""

from __future__ import annotations

from .dataset import DEFAULT_LENGTHS, SPLITS, ToyWorldDataset, seed_of
from .render import (
    COLOUR_NAMES,
    COLOURS,
    PATTERNS,
    SHAPES,
    Clip,
    SceneSpec,
    motion_caption,
    object_caption,
    render_clip,
    render_scene,
    sample_spec,
    scene_caption,
    visible_objects,
    vocabulary,
)
from .tasks import MASK_KINDS, TASK_KEYS, TASKS, build_sample, coarse_warp

__all__ = [
    "COLOURS", "COLOUR_NAMES", "DEFAULT_LENGTHS", "MASK_KINDS", "PATTERNS", "SHAPES", "SPLITS", "TASKS", "TASK_KEYS",
    "Clip", "SceneSpec", "ToyWorldDataset", "build_sample", "coarse_warp", "motion_caption", "object_caption",
    "render_clip", "render_scene", "sample_spec", "scene_caption", "seed_of", "visible_objects", "vocabulary",
]
