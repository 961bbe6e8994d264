"""Stage-1 foundations: cached per budget, rebuilt when the asked budget differs, config errors name the key."""

from __future__ import annotations

import json

import pytest

from refedit.backbone.foundations import FoundationsConfig, ensure_foundations, foundations_ready
from refedit.utils.config import compose, config_from_dict


def test_foundations_cached_per_budget(tmp_path, monkeypatch):
    cfg = FoundationsConfig(vae_steps=2, clip_steps=2, num_images=24, vae_batch=4, clip_batch=8)
    out = ensure_foundations(tmp_path / "f", cfg)
    info = json.loads((out / "foundations.json").read_text())
    assert info["config"]["vae_steps"] == 2 and foundations_ready(out, cfg)
    import refedit.backbone.foundations as fd

    monkeypatch.setattr(fd, "build_foundations", lambda *a, **k: pytest.fail("rebuilt cached foundations"))
    assert ensure_foundations(tmp_path / "f", cfg) == out
    other = FoundationsConfig(vae_steps=3, clip_steps=2, num_images=24, vae_batch=4, clip_batch=8)
    assert not foundations_ready(out, other), "foundations of another budget must not be reused"


def test_foundation_budgets_compose_to_distinct_cache_dirs():
    default = compose("compare", ["paths.output_dir=/tmp/x"])
    smoke = compose("compare", ["paths.output_dir=/tmp/x", "preset=smoke"])
    assert default.foundations.name != smoke.foundations.name
    assert default.paths.foundations_dir != smoke.paths.foundations_dir
    assert default.paths.probe_dir != smoke.paths.probe_dir
    assert "foundations=quick" in smoke.preset.train_overrides, "smoke trainings must use the smoke foundations"


def test_unknown_budget_key_is_named():
    with pytest.raises(KeyError, match=r"foundations\.stage1.*vae_stepz"):
        config_from_dict(FoundationsConfig, {"vae_stepz": 3}, "foundations.stage1")
