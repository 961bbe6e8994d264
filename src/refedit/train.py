"""Train one method: python -m refedit.train method=<name> [experiment=smoke] [key=value ...]"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf

from refedit.utils.cli import report_input_errors
from refedit.utils.config import CONFIG_DIR, build_method, to_dict
from refedit.utils.run import instantiate_dict, task_wrapper

log = logging.getLogger("refedit.train")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last: no {last} to resume from (use hydra.run.dir=<old run dir>)")
        ckpt_path = str(last)
    elif not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    from refedit.utils.checkpoint import read_checkpoint

    read_checkpoint(ckpt_path, mmap=True)  # a corrupt or refused file stops the run before any model is built
    return ckpt_path


def _stored_wandb_id(ckpt_path: str) -> str | None:
    from refedit.utils.checkpoint import read_checkpoint

    return read_checkpoint(ckpt_path, mmap=True).get("wandb_run_id")


def _slurm_requeue_checkpoint(output_dir: Path) -> str | None:
    """The hpc_ckpt_<n>.ckpt Lightning resumes from by itself in a requeued SLURM job (ckpt_path unset)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    found = sorted(output_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.rpartition("_")[2] or 0))
    return str(found[-1]) if found else None


#: trainer config keys refedit reads itself (never passed to lightning's Trainer): `skip_nonfinite` is handed to the
#: method, whose training step skips non-finite losses
TRAINER_OWN_KEYS = ("skip_nonfinite",)


def trainer_arguments(trainer_cfg: DictConfig) -> dict:
    """The `trainer` config as lightning.Trainer's arguments; a key the Trainer does not take is an error."""
    from hydra.utils import get_class

    from refedit.utils.config import check_known_keys, named_parameters

    d = {k: v for k, v in to_dict(trainer_cfg).items() if k not in TRAINER_OWN_KEYS}
    target = d.get("_target_", "lightning.pytorch.Trainer")
    known = named_parameters(get_class(target))
    check_known_keys(d, known, "trainer", target, f", and refedit's own {list(TRAINER_OWN_KEYS)}")
    return d


class FinalCheckpoint(Checkpoint):
    """Writes final.ckpt when training ends, inside the training process(es): after `fit` returns, a ddp_spawn
    parent holds only the weights (no step, optimiser, EMA or RNG state), and every rank must join a save."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.written = False

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)
        self.written = True


def train(cfg: DictConfig) -> str:
    """Train one method; returns its final checkpoint's path."""
    return train_with_metrics(cfg)[0]


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value of `optimized_metric` (what a Hydra sweeper such as Optuna optimises), None when unset."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name}: not logged by this run (logged: {sorted(metrics)}); validation "
                       f"logs val/loss every trainer.val_check_interval steps")
    return metrics[name]


@task_wrapper
def train_with_metrics(cfg: DictConfig) -> tuple[str, dict[str, float]]:
    """Train one method; returns its final checkpoint's path and the last logged metrics (`callback_metrics`)."""
    from hydra.utils import instantiate
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from omegaconf import open_dict

    from refedit.callbacks.preemption import PreemptionCheckpoint
    from refedit.data.datamodule import build_datamodule
    from refedit.utils.checkpoint_io import AtomicCheckpointIO

    # the DataModule resumes its sampler itself (state_dict), which Lightning's check for a stateful loader misses
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    from refedit.foundations import prepare_foundations

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    prepare_foundations(cfg)
    model = build_method(cfg.method, skip_nonfinite=bool(cfg.trainer.get("skip_nonfinite", False)))
    datamodule = build_datamodule(cfg.data, model)  # the method's data transform runs in the data workers
    resume_from = ckpt_path or _slurm_requeue_checkpoint(output_dir)
    if resume_from and cfg.get("logger") and cfg.logger.get("wandb"):
        run_id = _stored_wandb_id(resume_from)
        if run_id:  # a resumed run continues the same W&B run
            with open_dict(cfg):
                cfg.logger.wandb.id = run_id
                cfg.logger.wandb.resume = "allow"
    from refedit.utils.tracking import configure_wandb_node, hydra_choice

    configure_wandb_node(cfg, str(cfg.method.get("name") or "train"),
                         preset=cfg.get("logger_preset") or hydra_choice("experiment") or "none",
                         backbone=hydra_choice("backbone") or cfg.backbone.get("name"))
    loggers = instantiate_dict(cfg.get("logger"))
    final = output_dir / "checkpoints" / "final.ckpt"
    final_cb = FinalCheckpoint(final)
    callbacks = [*instantiate_dict(cfg.get("callbacks")), final_cb]
    if not loggers:  # logger=none: nothing to monitor the learning rate into
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer_cfg = trainer_arguments(cfg.trainer)
    method_id = f"{type(model).__module__}.{type(model).__qualname__}"
    trainer: L.Trainer = instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks,
                                     plugins=[AtomicCheckpointIO(expect_method=method_id)], _convert_="all")
    composed = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in cfg if k != "hydra"}
    for lg in loggers:  # the one hyperparameter record (methods save theirs with logger=False)
        lg.log_hyperparams(composed)
    started = time.time()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # Lightning's own exit on SIGTERM carries no message and exit status 0
        pass
    preempted = [cb.preempted for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint) and cb.preempted]
    if trainer.received_sigterm or trainer.interrupted or preempted:
        why = preempted[0] if preempted else ("SIGTERM" if trainer.received_sigterm else "interrupted")
        raise SystemExit(f"training stopped early ({why}) at step {trainer.global_step}; resume with "
                         f"hydra.run.dir={output_dir} ckpt_path=last")
    spawned_wrote = final.is_file() and final.stat().st_mtime >= started  # written in ddp_spawn workers
    if not final_cb.written and not spawned_wrote:  # e.g. resumed at max_steps: no training ran
        trainer.save_checkpoint(final)
    log.info("checkpoint: %s", final)
    print(f"checkpoint: {final}", flush=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return str(final), metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@report_input_errors("refedit.train")
def main(cfg: DictConfig) -> float | None:
    """Returns the value of `optimized_metric` for sweepers that optimise (conf/hparams_search/)."""
    _, metrics = train_with_metrics(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
