"""One LightningDataModule for every pipeline: datasets are Hydra nodes, batches follow refedit.batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from refedit.batch import collate_edit


def _worker_init(worker_id: int) -> None:
    """Each worker re-seeds torch from its own seed so random augmentation differs across workers but is
    reproducible for a given (seed, worker id)."""
    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


class EditDataModule(L.LightningDataModule):
    def __init__(self, train_dataset: Mapping[str, Any] | Dataset | None = None,
                 val_dataset: Mapping[str, Any] | Dataset | None = None, batch_size: int = 8,
                 val_batch_size: int | None = None, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, on_error: str = "skip", **_: Any):
        super().__init__()
        if on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error must be 'skip' or 'raise', got {on_error!r}")
        self.train_cfg, self.val_cfg = train_dataset, val_dataset
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.on_error = on_error
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _build(self, cfg):
        if cfg is None or isinstance(cfg, Dataset):
            return cfg
        kwargs = {"on_error": self.on_error} if "on_error" in _init_args(cfg) else {}
        return instantiate(cfg, _convert_="all", **kwargs)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._build(self.train_cfg)
        if self.val_set is None:
            self.val_set = self._build(self.val_cfg)

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_edit, pin_memory=self.pin_memory, drop_last=shuffle,
                          persistent_workers=self.persistent_workers, worker_init_fn=_worker_init)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise ValueError("data.train_dataset is not set: choose a data config (e.g. data=toyworld)")
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return [] if self.val_set is None else self._loader(self.val_set, self.val_batch_size, shuffle=False)


def _init_args(cfg: Mapping[str, Any]) -> set[str]:
    import inspect

    from hydra.utils import get_class

    target = cfg.get("_target_") if isinstance(cfg, Mapping) else None
    if not target:
        return set()
    try:
        return set(inspect.signature(get_class(target).__init__).parameters)
    except (ImportError, ValueError, TypeError):
        return set()
