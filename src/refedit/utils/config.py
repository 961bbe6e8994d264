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


def default_precision(accelerator: str = "auto") -> str:
    """`trainer.precision` by default: bf16-mixed where training runs on a CUDA GPU with bf16 (accelerator auto,
    gpu or cuda), 32-true elsewhere (the CPU, and GPUs without bf16, where fp16 would need loss scaling)."""
    import torch

    on_cuda = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_cuda and torch.cuda.is_bf16_supported() else "32-true"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("refedit.root"):
        OmegaConf.register_new_resolver("refedit.root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("refedit.precision"):
        OmegaConf.register_new_resolver("refedit.precision", default_precision)
    if not OmegaConf.has_resolver("refedit.wandb_offline"):
        from refedit.utils.tracking import wandb_offline

        OmegaConf.register_new_resolver("refedit.wandb_offline", wandb_offline)


register_resolvers()


def to_dict(cfg: DictConfig | dict) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def check_known_keys(values, known, where: str, owner: str, note: str = "") -> None:
    """A mistyped option is an error naming the key and the allowed ones, never silently ignored."""
    unknown = sorted(set(values) - set(known) - {"_target_"})
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; {owner} has {sorted(known)}{note}")


def named_parameters(fn) -> set[str]:
    """The keyword arguments a callable (a class: its constructor) names, without self / *args / **kwargs."""
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds and n != "self"}


#: method config keys that are settings of a preset, not arguments: `smoke` is the method's experiment=smoke budget
METHOD_PRESET_KEYS = ("smoke",)


def method_arguments(cls) -> set[str]:
    """What a method config may set: the named constructor arguments along the class's bases (while a constructor
    passes **kwargs on) and, since LatentEditModule hands the rest to `build()`, build's."""
    import inspect

    names: set[str] = set()
    for base in cls.__mro__:
        if "__init__" not in vars(base):
            continue
        names |= named_parameters(base.__init__)
        params = inspect.signature(base.__init__).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    build = getattr(cls, "build", None)
    return names | (named_parameters(build) if callable(build) else set())


def build_method(method_cfg: DictConfig | dict, **overrides: Any):
    """Instantiate a method from its config node: `_target_` names the class, the rest are its arguments, except
    the preset-only keys (`METHOD_PRESET_KEYS`: read by experiment presets, never passed to the class)."""
    from hydra.utils import get_class

    d = to_dict(method_cfg)
    target = d.pop("_target_", None)
    if not target:
        raise ValueError("method config has no _target_ (choose one with method=<name>)")
    for key in METHOD_PRESET_KEYS:
        d.pop(key, None)
    d.update(overrides)
    cls = get_class(target)
    check_known_keys(d, method_arguments(cls) - set(METHOD_PRESET_KEYS), "method", cls.__name__)
    return cls(**d)


def config_from_dict(cls, values, where: str):
    """A dataclass config from a (Hydra) mapping, naming the config key on an unknown field."""
    values = dict(values or {})
    check_known_keys(values, {f.name for f in dataclasses.fields(cls)}, where, cls.__name__)
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
