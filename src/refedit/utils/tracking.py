"""W&B runs as a researcher reads them: one offline switch, runs named from their overrides, a sweep's jobs in
one group named after the sweep, `job_type` train / eval / compare, tags with the preset and the backbone."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the one switch: W&B is offline unless REFEDIT_WANDB_OFFLINE is false / 0 / no / off
OFFLINE_ENV = "REFEDIT_WANDB_OFFLINE"

#: override keys that say where things are or how they are logged, not what the run is, left out of run names:
#: these keys, and every key under the groups of `_GROUPS_NOT_IN_NAMES` (the method is the name's base; the
#: preset is a tag)
_KEYS_NOT_IN_NAMES = ("method", "experiment", "tags", "ckpt_path", "ckpt", "backbone.root", "backbone.build_foundations",
                      "logger_group", "logger_preset", "data_dir")
_GROUPS_NOT_IN_NAMES = ("hydra", "paths", "logger")


def wandb_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "true").strip().lower() not in ("false", "0", "no", "off")


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _parse(overrides: Sequence[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def swept_keys() -> list[str] | None:
    """The keys a multirun sweeps (comma lists, range / choice / interval on the command line, and the sweeper's
    `params`, e.g. an Optuna search space); None outside a multirun."""
    from hydra.types import RunMode

    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    keys = [str(k) for k in (hc.sweeper.get("params") or {})]
    sweep_cfg = Path(hc.sweep.dir) / "multirun.yaml"  # the sweep's own command line, written before its jobs
    if sweep_cfg.is_file():
        from omegaconf import OmegaConf

        task = OmegaConf.load(sweep_cfg).hydra.overrides.task
        keys += [o.get_key_element().lstrip("+~") for o in _parse(task) if o.is_sweep_override()]
    return list(dict.fromkeys(keys))


def run_name(base: str, overrides: Sequence[str] | None = None, swept: Sequence[str] | None = None) -> str:
    """`base` plus this job's overrides as `key=value` (the last key part, unless two would read alike): in a
    multirun only the swept keys, otherwise every override but those of paths and logging (`_NOT_IN_NAMES`)."""
    hc = _hydra()
    if overrides is None:
        overrides = list(hc.overrides.task) if hc is not None else []
    if swept is None:
        swept = swept_keys()
    pairs = []
    for o in _parse(overrides):
        key = o.get_key_element().lstrip("+~")
        if swept is not None and key not in swept:
            continue
        if o.is_delete() or key in _KEYS_NOT_IN_NAMES or key.split(".")[0] in _GROUPS_NOT_IN_NAMES:
            continue
        value = o.get_value_string()
        if "/" in value or os.sep in value:  # a path names a place, not a setting
            continue
        pairs.append((key, value))
    short = [k.rpartition(".")[2] for k, _ in pairs]
    words = [f"{s if short.count(s) == 1 else k}={v}" for s, (k, v) in zip(short, pairs)]
    return " ".join([base, *words])


def sweep_group(task_name: str) -> str | None:
    """A multirun's group: `<task>-<sweep dir name>` (e.g. train-2026-01-31_12-00-00), shared by its jobs."""
    from hydra.types import RunMode

    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return f"{task_name}-{Path(hc.sweep.dir).name}"


def run_tags(tags: Sequence[str], preset: str | None, backbone: str | None) -> list[str]:
    """`tags` plus preset:<name> and backbone:<name> (each when known)."""
    extra = [f"{k}:{v}" for k, v in (("preset", preset), ("backbone", backbone)) if v]
    return list(dict.fromkeys([*tags, *extra]))


def hydra_choice(group: str) -> str | None:
    hc = _hydra()
    return None if hc is None else hc.runtime.choices.get(group)


def configure_wandb_node(cfg: Any, base_name: str, preset: str | None, backbone: str | None) -> None:
    """Fill the `logger.wandb` node's unset name / group and its tags from the run (see the module doc)."""
    from omegaconf import open_dict

    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return
    with open_dict(node):
        if node.get("name") is None:
            node.name = run_name(base_name)
        if node.get("group") is None:
            node.group = sweep_group(str(cfg.get("task_name", "train")))
        node.tags = run_tags(list(node.get("tags") or []), preset, backbone)
