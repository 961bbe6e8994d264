"""One LightningDataModule for every pipeline: datasets are Hydra nodes, batches follow refedit.batch."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from refedit.batch import collate_edit
from refedit.utils.cli import UsageError

log = logging.getLogger(__name__)


def _worker_init(worker_id: int) -> None:
    """Each worker re-seeds torch from its own seed so random augmentation differs across workers but is
    reproducible for a given (seed, worker id)."""
    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


class TransformedDataset(Dataset):
    """`dataset[i]` passed through `transform`: the transform runs where the sample is loaded (the data workers)."""

    def __init__(self, dataset: Dataset, transform: Callable[[dict[str, Any]], dict[str, Any]]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.transform(self.dataset[index])


def _epoch_datasets(dataset: Any) -> Iterator[Any]:
    """The datasets under `dataset` that draw per epoch (`RobustDataset.set_epoch`: masks, crops, augmentations),
    found through the wrappers refedit and torch put around them (`TransformedDataset`, `SkipBadSamples`,
    `Subset`: `.dataset`; `ConcatDataset`: `.datasets`)."""
    if callable(getattr(dataset, "set_epoch", None)):
        yield dataset
        return
    for ds in getattr(dataset, "datasets", None) or [getattr(dataset, "dataset", None)]:
        if ds is not None:
            yield from _epoch_datasets(ds)


def set_dataset_epoch(dataset: Any, epoch: int) -> None:
    """Pass the epoch to every dataset under `dataset` that draws per epoch."""
    for ds in _epoch_datasets(dataset):
        ds.set_epoch(int(epoch))


def has_epoch_draws(dataset: Any) -> bool:
    """Whether some dataset under `dataset` varies its draws with the epoch."""
    return next(_epoch_datasets(dataset), None) is not None


class ResumableSampler(DistributedSampler):
    """Shuffled training order that a resumed run continues exactly.

    The permutation comes from (seed, epoch), never from the global RNG, so a resumed run regenerates the
    epoch's order and skips the samples already trained on (a plain shuffled DataLoader restarts its epoch
    with a new order: Lightning restores the step counter, not the loader's position). Being a
    DistributedSampler, Lightning keeps it under DDP (each rank takes its slice of the same permutation) and
    calls `set_epoch` on it before each epoch's loader iterator (and its workers) is created; the sampler passes
    the epoch on to the dataset, so per-epoch draws (masks, augmentations) differ between epochs and a resumed
    epoch draws what the uninterrupted one did.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        set_dataset_epoch(self.dataset, epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        """Start at epoch `epoch`, leaving out the first `skip` samples of this rank's slice."""
        self.set_epoch(epoch)
        self._resume = (epoch, skip)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None  # only the first pass after a resume is shortened
            if epoch == self.epoch:
                indices = indices[skip:]
        return iter(indices)


class EditDataModule(L.LightningDataModule):
    """`sample_transform`: a picklable per-sample function run by the data workers on every training and
    validation sample (a method's `data_transform()`, e.g. Magic Fixup's hole filling; see `build_datamodule`).
    `task`: the sample kind the method trains on (datasets read it as `${data.task}`)."""

    def __init__(self, train_dataset: Mapping[str, Any] | Dataset | None = None,
                 val_dataset: Mapping[str, Any] | Dataset | None = None, batch_size: int = 8,
                 val_batch_size: int | None = None, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, on_error: str = "skip", seed: int | None = None,
                 sample_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 task: str | None = None):
        super().__init__()
        self.task = task
        self.sample_transform = sample_transform
        if on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error must be 'skip' or 'raise', got {on_error!r}")
        for key, n in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise UsageError(f"data.{key}={n}: must be a positive integer")
        self.train_cfg, self.val_cfg = train_dataset, val_dataset
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.on_error = on_error
        # the training order's seed; default: the run's seed (seed_everything exports PL_GLOBAL_SEED)
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else int(seed)
        self._resume: dict[str, int] | None = None
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
        if self.sample_transform is not None:
            ds = TransformedDataset(ds, self.sample_transform)
        sampler = None
        if shuffle:
            world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            sampler = ResumableSampler(ds, num_replicas=world, rank=rank, seed=self.seed)
            if self._resume:
                epoch, skip = self._resume["epoch"], self._resume["batches"] * self._resume["batch_size"]
                if skip >= sampler.num_samples:  # saved at the very end of an epoch
                    epoch, skip = epoch + 1, 0
                sampler.resume_at(epoch, skip)
                self._resume = None
            if self.persistent_workers and has_epoch_draws(ds):
                log.warning("data.persistent_workers=true: the workers keep their copy of the dataset, so its "
                            "per-epoch draws (masks, augmentations) repeat every epoch; set it to false")
        # own generator: creating an iterator (workers' base seed) does not draw from the global RNG,
        # so the training noise stream is the same with and without a resume
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_edit, pin_memory=self.pin_memory, drop_last=shuffle,
                          persistent_workers=self.persistent_workers, worker_init_fn=_worker_init,
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise ValueError("data.train_dataset is not set: choose a data config (e.g. data=toyworld)")
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def state_dict(self) -> dict[str, Any]:
        """Where training is in the data: the epoch and the batches of it already trained on (per rank)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(trainer.current_epoch), "batches": int(done), "batch_size": int(self.batch_size),
                "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("seed", self.seed) != self.seed:
            log.warning("resuming with data seed %s (checkpoint: %s): the training order changes", self.seed,
                        state_dict["seed"])
        self._resume = {k: int(state_dict[k]) for k in ("epoch", "batches", "batch_size")}

    def val_dataloader(self):
        return [] if self.val_set is None else self._loader(self.val_set, self.val_batch_size, shuffle=False)


def build_datamodule(data_cfg: Any, method: Any = None) -> L.LightningDataModule:
    """The `data` config's DataModule; a method's `data_transform()` (if any) becomes its per-sample transform.

    A data config holds the DataModule's arguments and its own variables: keys its datasets (or any other
    config) read as `${data.<key>}` (`size`, `root`, `frames`, ...). Any other key is a mistyped option and an
    error naming it, the DataModule's arguments and those variables."""
    from hydra.utils import get_class

    from refedit.utils.config import check_known_keys, named_parameters

    where = "data"
    if OmegaConf.is_config(data_cfg):
        where = data_cfg._get_full_key(None) or "data"
        variables = interpolated_keys(data_cfg._get_root(), where)
        values = OmegaConf.to_container(data_cfg, resolve=True, throw_on_missing=True)
    else:
        variables, values = set(), dict(data_cfg)
    target = values.pop("_target_", None)
    if not target:
        raise ValueError(f"{where} has no _target_ (choose a data config, e.g. data=toyworld)")
    cls = get_class(target)
    args = named_parameters(cls)
    note = f"; and the variables read as ${{{where}.<key>}}: {sorted(variables)}" if variables else ""
    check_known_keys(values, args | variables, where, cls.__name__, note)
    dm = cls(**{k: v for k, v in values.items() if k in args})
    # set after instantiation: a dataclass transform in the config would be converted to a dict
    dm.sample_transform = method.data_transform() if method is not None else None
    return dm


def interpolated_keys(cfg: Any, node: str) -> set[str]:
    """The keys of `node` that interpolations anywhere in `cfg` read (`${data.size}`, `${oc.select:data.frames,8}`),
    from the unresolved config."""
    import re

    pattern = re.compile(r"(?<![\w.])" + re.escape(node) + r"\.(\w+)")
    found: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and "${" in v:
            found.update(pattern.findall(v))

    tree = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else dict(cfg)
    tree.pop("hydra", None)  # Hydra's own node (it records the overrides, not interpolations of data)
    walk(tree)
    return found


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
