"""EditDataModule through a real Lightning loop: per-epoch draws, exact resume across epochs, unknown options."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from refedit.data.datamodule import EditDataModule
from refedit.data.errors import RobustDataset


class Draws(RobustDataset):
    """Each sample is one draw of its per-sample generator: what a mask or an augmentation would be."""

    def __len__(self) -> int:
        return 8

    def load(self, index: int):
        return {"target": torch.zeros(1), "meta": {"i": index, "draw": float(self.rng(index).random())}}


class Recorder(L.LightningModule):
    """Records (epoch, index, draw) of every training sample; its one weight never changes (lr 0)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int, int, float]] = []

    def training_step(self, batch, batch_idx):
        for m in batch["meta"]:
            self.seen.append((self.global_step, self.current_epoch, m["i"], m["draw"]))
        return (self.w * batch["target"]).sum() + self.w.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(tmp: Path, *, ckpt_path: str | None = None, **trainer_kw) -> Recorder:
    model = Recorder()
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp, every_n_train_steps=6, save_top_k=-1, save_last=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[save], num_sanity_val_steps=0, **trainer_kw)
    trainer.fit(model, datamodule=EditDataModule(train_dataset=Draws(seed=5), batch_size=2, seed=3),
                ckpt_path=ckpt_path)
    return model


def test_each_epoch_draws_anew_and_a_resume_mid_epoch_draws_the_same(tmp_path):
    straight = _fit(tmp_path / "straight", max_epochs=2)
    by_epoch = {e: {i: d for _, ep, i, d in straight.seen if ep == e} for e in (0, 1)}
    assert sorted(by_epoch[0]) == sorted(by_epoch[1]) == list(range(8))  # every sample once per epoch
    same = [i for i in range(8) if by_epoch[0][i] == by_epoch[1][i]]
    assert not same, f"samples {same} drew the same in epoch 1 as in epoch 0 (dataset epoch not set)"

    first = _fit(tmp_path / "split", max_steps=6)  # stops inside epoch 1 (4 steps per epoch)
    ckpt = next((tmp_path / "split").glob("*step=6.ckpt"))
    second = _fit(tmp_path / "resumed", max_epochs=2, ckpt_path=str(ckpt))
    assert [s for s in first.seen if s[0] < 6] + second.seen == straight.seen


def test_the_epoch_reaches_datasets_inside_wrappers():
    from torch.utils.data import ConcatDataset, Subset

    from refedit.data.datamodule import ResumableSampler, TransformedDataset
    from refedit.data.errors import SkipBadSamples

    inner = [Draws(), Draws(seed=1)]
    wrapped = TransformedDataset(ConcatDataset([SkipBadSamples(inner[0]), Subset(inner[1], [0, 1])]), dict)
    ResumableSampler(wrapped).set_epoch(4)
    assert [d.epoch for d in inner] == [4, 4]


# ----------------------------------------------------------------------------------------------- unknown keys
DATA_CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "data").glob("*.yaml")
                      if p.stem != "datamodule")
PATHS = ["annotations", "image_root", "val_annotations", "val_image_root", "boxes_csv", "val_boxes_csv", "root",
         "val_root"]


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_passes_the_unknown_key_check(name):
    from refedit.data.datamodule import build_datamodule
    from refedit.utils.config import compose

    cfg = compose("train", [f"data={name}", "paths.output_dir=/tmp/x"])
    paths = [f"data.{k}=/nowhere/{k}" for k in PATHS if k in cfg.data.keys()]
    dm = build_datamodule(compose("train", [f"data={name}", "paths.output_dir=/tmp/x", *paths]).data)
    assert isinstance(dm, EditDataModule) and dm.task == cfg.method.task


@pytest.mark.parametrize("override, named", [("+data.batchsize=4", "batchsize"), ("+data.szie=32", "szie")])
def test_a_mistyped_data_option_is_an_error_naming_it_and_the_allowed_ones(override, named):
    from refedit.data.datamodule import build_datamodule
    from refedit.utils.config import compose

    cfg = compose("train", ["paths.output_dir=/tmp/x", override])
    with pytest.raises(KeyError, match=rf"data: unknown key\(s\) \['{named}'\]") as err:
        build_datamodule(cfg.data)
    assert "'batch_size'" in str(err.value) and "'size'" in str(err.value)  # the arguments and the variables
    with pytest.raises(TypeError, match="batchsize"):
        EditDataModule(batchsize=4)  # built directly, as well


def test_a_mistyped_trainer_option_is_an_error():
    from refedit.train import trainer_arguments
    from refedit.utils.config import compose

    assert "skip_nonfinite" not in trainer_arguments(compose("train", ["paths.output_dir=/tmp/x"]).trainer)
    cfg = compose("train", ["paths.output_dir=/tmp/x", "+trainer.max_step=3"])
    with pytest.raises(KeyError, match=r"trainer: unknown key\(s\) \['max_step'\].*'max_steps'.*skip_nonfinite"):
        trainer_arguments(cfg.trainer)


class Method:
    """Stands in for a method class: what build_method passes it."""

    def __init__(self, backbone: dict, lr: float = 1e-4):
        self.backbone, self.lr = backbone, lr


def test_method_configs_pass_no_preset_keys_and_refuse_unknown_ones():
    from refedit.utils.config import build_method

    target = f"{__name__}.Method"
    m = build_method({"_target_": target, "backbone": {}, "lr": 3e-4, "smoke": {"batch_size": 2}})
    assert m.lr == 3e-4  # built: `smoke` (the preset's budget) is not an argument
    with pytest.raises(KeyError, match=r"method: unknown key\(s\) \['lrr'\]; Method has \['backbone', 'lr'\]"):
        build_method({"_target_": target, "backbone": {}, "lrr": 3e-4})


def test_a_real_methods_arguments_include_its_build_options():
    from refedit.methods.sd_inpaint import SDInpaint
    from refedit.utils.config import method_arguments

    assert {"backbone", "optimizer", "sampling", "mode", "full_mask_prob", "unet_init"} <= method_arguments(SDInpaint)


def _shipped(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / group).glob("*.yaml"))


def test_every_shipped_method_experiment_and_trainer_passes_the_checks():
    """The checks refuse only mistakes: every method (alone and under experiment=smoke), every experiment preset
    and every trainer preset composes into arguments its classes take."""
    from hydra.utils import get_class

    from refedit.data.datamodule import interpolated_keys
    from refedit.train import trainer_arguments
    from refedit.utils.config import (
        METHOD_PRESET_KEYS,
        check_known_keys,
        compose,
        method_arguments,
        named_parameters,
    )

    runs = [[f"method={m}", *e] for m in _shipped("method") for e in ([], ["experiment=smoke"])]
    runs += [[f"experiment={e}"] for e in _shipped("experiment") if e != "smoke"]
    runs += [[f"trainer={t}"] for t in _shipped("trainer")]
    for ov in runs:
        cfg = compose("train", ["paths.output_dir=/tmp/x", *ov])
        cls = get_class(cfg.method._target_)
        check_known_keys(set(cfg.method) - set(METHOD_PRESET_KEYS), method_arguments(cls), f"{ov}: method", "")
        trainer_arguments(cfg.trainer)
        dm = named_parameters(get_class(cfg.data._target_))
        check_known_keys(set(cfg.data.keys()), dm | interpolated_keys(cfg, "data"), f"{ov}: data", "")
