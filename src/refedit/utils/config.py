"""Hydra/OmegaConf glue: resolvers, and building methods, data and trainers from a composed config."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_DIR.parents[1]  # the source checkout, when refedit runs from one (see `in_checkout`)
# An installed wheel carries the configs as refedit/conf (pyproject.toml maps the top-level conf/ there); a
# source checkout (editable install, or PYTHONPATH=src) reads conf/ itself.
CONFIG_DIR = PACKAGE_DIR / "conf" if (PACKAGE_DIR / "conf").is_dir() else REPO_ROOT / "conf"


def in_checkout() -> bool:
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "conf").is_dir()


def project_root() -> Path:
    """Where logs/ and .cache/ go (`paths.root_dir`): $REFEDIT_ROOT, else the source checkout refedit runs
    from, else (an installed package) the current directory."""
    env = os.environ.get("REFEDIT_ROOT")
    return Path(env) if env else REPO_ROOT if in_checkout() else Path.cwd()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("refedit.root"):
        OmegaConf.register_new_resolver("refedit.root", lambda: str(project_root()))


register_resolvers()


def to_dict(cfg: DictConfig | dict) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def build_method(method_cfg: DictConfig | dict, **overrides: Any):
    """Instantiate a method from its config node: `_target_` names the class, the rest are its arguments."""
    from hydra.utils import get_class

    d = to_dict(method_cfg)
    target = d.pop("_target_", None)
    if not target:
        raise ValueError("method config has no _target_ (choose one with method=<name>)")
    d.update(overrides)
    return get_class(target)(**d)


def config_from_dict(cls, values, where: str):
    """A dataclass config from a (Hydra) mapping, naming the config key on an unknown field."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; {cls.__name__} has {sorted(known)}")
    return cls(**values)


def stored_matches(stored: Any, cfg: Any) -> bool:
    """Whether a dataclass config equals its JSON-stored form (tuples are lists there)."""
    return stored == json.loads(json.dumps(dataclasses.asdict(cfg)))


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose the real configs outside a Hydra app (tests, notebooks), with the hydra node resolvable."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
