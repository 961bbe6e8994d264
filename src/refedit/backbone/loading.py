"""One way to get a component: `from_pretrained` of a local dir or hub id, or construction from a config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch


class ComponentLoadError(RuntimeError):
    pass


def _is_local_or_hub(path: str) -> bool:
    return os.path.isdir(path) or (path.count("/") == 1 and not path.startswith((".", "/")))


def load_component(cls: type, spec: Mapping[str, Any] | None, *, name: str, config: Mapping | None = None,
                   meta: bool = False, **kwargs: Any):
    """Load `cls` from `spec.pretrained` (+ `spec.subfolder`), else build it from `spec.config` / `config`.

    `meta=True` builds from config on the meta device (architecture checks of full-size models without weights).
    """
    spec = dict(spec or {})
    pretrained = spec.get("pretrained")
    cfg = spec.get("config", config)
    if pretrained and not meta:
        pretrained = os.path.expanduser(str(pretrained))
        subfolder = spec.get("subfolder")
        if not _is_local_or_hub(pretrained):
            raise ComponentLoadError(
                f"backbone.{name}.pretrained='{pretrained}' is neither an existing directory nor a hub id"
            )
        if os.path.isdir(pretrained) and subfolder and not os.path.isdir(os.path.join(pretrained, subfolder)):
            raise ComponentLoadError(
                f"backbone.{name}: '{pretrained}' has no subfolder '{subfolder}' (expected diffusers layout)"
            )
        try:
            return cls.from_pretrained(pretrained, subfolder=subfolder, **kwargs)
        except OSError as e:  # missing files, or a hub id with no network
            raise ComponentLoadError(f"backbone.{name}: cannot load {cls.__name__} from '{pretrained}'"
                                     f"{'/' + subfolder if subfolder else ''}: {e}") from e
    if cfg is None:
        raise ComponentLoadError(f"backbone.{name} needs `pretrained` (a directory or hub id) or a `config`")
    cfg = dict(cfg)
    if meta:
        with torch.device("meta"):
            return _from_config(cls, cfg)
    return _from_config(cls, cfg)


def _from_config(cls: type, cfg: dict):
    if hasattr(cls, "from_config"):  # diffusers ConfigMixin
        return cls.from_config(cfg)
    config_class = getattr(cls, "config_class", None)  # transformers PreTrainedModel
    if config_class is not None:
        return cls(config_class(**cfg))
    return cls(**cfg)
