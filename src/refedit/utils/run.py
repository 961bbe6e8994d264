"""What every entry point shares: output-dir logging, W&B closing (also in multirun), loggers and callbacks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("refedit")


def task_wrapper(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Log the run's output dir and always close the W&B run, so multirun jobs never share or leak a run."""

    @functools.wraps(fn)
    def wrapped(cfg: DictConfig):
        from hydra.core.hydra_config import HydraConfig

        out = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.paths.get("output_dir")
        try:
            return fn(cfg)
        finally:
            log.info("output dir: %s", out)
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
            except ImportError:
                pass

    return wrapped


def instantiate_dict(node: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group node (callbacks/, logger/)."""
    from hydra.utils import instantiate

    if not node:
        return []
    return [instantiate(v, _convert_="all") for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


class CheckOutputDir(Callback):
    """Hydra callback (conf/hydra/default.yaml): a run or sweep dir that cannot be created is one line and exit
    status 2 before the job starts (Hydra itself would print a stack trace on its mkdir)."""

    def _check(self, config: DictConfig, key: str) -> None:
        import sys

        from refedit.utils.cli import UsageError, check_writable

        try:
            check_writable(str(config.hydra[key].dir), f"hydra.{key}.dir", directory=True)
        except UsageError as e:
            print(f"refedit.{config.get('task_name', 'run')}: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "sweep")
