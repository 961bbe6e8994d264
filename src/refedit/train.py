"""Train one method: python -m refedit.train method=<name> [experiment=smoke] [key=value ...]"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from refedit.utils.config import CONFIG_DIR, build_method, prepare_backbone, to_dict
from refedit.utils.run import instantiate_dict, task_wrapper

log = logging.getLogger("refedit.train")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last: no {last} to resume from (use hydra.run.dir=<old run dir>)")
        return str(last)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return ckpt_path


def _stored_wandb_id(ckpt_path: str) -> str | None:
    from refedit.utils.checkpoint import read_checkpoint

    return read_checkpoint(ckpt_path).get("wandb_run_id")


@task_wrapper
def train(cfg: DictConfig) -> str:
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from refedit.utils.checkpoint_io import AtomicCheckpointIO

    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    prepare_backbone(cfg)
    datamodule = instantiate(cfg.data, _recursive_=False, _convert_="all")
    model = build_method(cfg.method, skip_nonfinite=bool(cfg.trainer.get("skip_nonfinite", False)))
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path and cfg.get("logger") and cfg.logger.get("wandb"):
        run_id = _stored_wandb_id(ckpt_path)
        if run_id:  # a resumed run continues the same W&B run
            with open_dict(cfg):
                cfg.logger.wandb.id = run_id
                cfg.logger.wandb.resume = "allow"
    loggers = instantiate_dict(cfg.get("logger"))
    callbacks = instantiate_dict(cfg.get("callbacks"))
    trainer_cfg = {k: v for k, v in to_dict(cfg.trainer).items() if k != "skip_nonfinite"}
    trainer: L.Trainer = instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks,
                                     plugins=[AtomicCheckpointIO()], _convert_="all")
    composed = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in cfg if k != "hydra"}
    for lg in loggers:
        lg.log_hyperparams(composed)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.received_sigterm or trainer.interrupted:
        raise SystemExit(f"training stopped early at step {trainer.global_step}; resume with ckpt_path=last")
    final = output_dir / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(final)
    log.info("checkpoint: %s", final)
    print(f"checkpoint: {final}", flush=True)
    return str(final)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
