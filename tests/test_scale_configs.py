"""Every real-scale experiment composes for multi-GPU training and SLURM submission (compose only: no GPU, no
cluster), and the strategy objects the configs name can be built."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from refedit.utils.config import CONFIG_DIR, compose

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*_sd1*.yaml"))
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def _compose(experiment: str, trainer: str, launcher: str = "slurm"):
    return compose(
        "train",
        [
            f"experiment={experiment}",
            f"trainer={trainer}",
            f"hydra/launcher={launcher}",
            "paths.output_dir=/tmp/refedit-compose-only",
        ],
    )


CASES = [(e, t) for e in EXPERIMENTS for t in ("ddp", "fsdp")]


@pytest.mark.parametrize(("experiment", "trainer"), CASES)
def test_experiment_composes_for_cluster_training(experiment, trainer):
    from hydra.utils import get_class
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    cfg = _compose(experiment, trainer)
    assert cfg.hydra.runtime.choices["trainer"] == trainer
    # model, trainer and callbacks resolve (env defaults, ${backbone...}); data paths are the user's to give
    for key in ("method", "backbone", "trainer", "callbacks"):
        OmegaConf.to_container(cfg[key], resolve=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == SLURM and get_class(launcher["_target_"]).__name__ == "SlurmLauncher"
    OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), launcher)  # every key is a typed submitit field
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == cfg.trainer.devices
    assert launcher["nodes"] == cfg.trainer.num_nodes
    assert launcher["max_num_timeout"] == 0, "submitit must not requeue too: Lightning is the requeue owner"
    strategy = OmegaConf.to_container(cfg.trainer.strategy, resolve=True)
    if (
        trainer == "ddp"
    ):  # DDPStrategy passes extra keys to DistributedDataParallel: they must be its arguments
        from torch.nn.parallel import DistributedDataParallel

        ddp_args = set(inspect.signature(DistributedDataParallel.__init__).parameters)
        extra = set(strategy) - {"_target_", "start_method", "process_group_backend", "timeout"}
        assert extra <= ddp_args, f"{experiment} + trainer=ddp: not DDP arguments: {sorted(extra - ddp_args)}"
    else:
        assert strategy["_target_"] == "refedit.utils.strategies.fsdp_strategy"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fsdp_strategy_object_builds(experiment):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = _compose(experiment, "fsdp")
    strategy = instantiate(cfg.trainer.strategy, _convert_="all")
    assert isinstance(strategy, FSDPStrategy)
    wrapped = {c.__name__ for c in strategy.kwargs["auto_wrap_policy"]._module_classes}
    assert {"BasicTransformerBlock", "ResnetBlock2D"} <= wrapped


def test_plugin_launcher_name_still_composes():
    """`hydra/launcher=submitit_slurm` is the plugin's node (bare defaults); ours: `hydra/launcher=slurm`."""
    cfg = _compose(EXPERIMENTS[0], "ddp", "submitit_slurm")
    assert cfg.hydra.launcher._target_ == SLURM and cfg.hydra.launcher.tasks_per_node == 1
