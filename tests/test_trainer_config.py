"""conf/trainer/default.yaml: the GPU with bf16-mixed when there is one, the CPU in 32-true otherwise."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from refedit.utils.config import compose


def _trainer(monkeypatch, cuda: bool, *overrides: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda)
    return compose("train", ["paths.output_dir=/tmp/x", *overrides]).trainer


def test_a_gpu_node_trains_on_the_gpu_in_bf16(monkeypatch):
    t = _trainer(monkeypatch, True)
    assert (t.accelerator, t.precision) == ("auto", "bf16-mixed")
    t = _trainer(monkeypatch, True, "trainer.accelerator=cpu")  # kept on the CPU: full precision there
    assert (t.accelerator, t.precision) == ("cpu", "32-true")
    assert _trainer(monkeypatch, True, "trainer=ddp_sim").precision == "32-true"


@pytest.mark.parametrize("overrides", [[], ["trainer.accelerator=cpu"]])
def test_a_cpu_node_trains_as_before(monkeypatch, overrides):
    from lightning.pytorch.accelerators import CPUAccelerator

    from refedit.train import trainer_arguments

    t = _trainer(monkeypatch, False, *overrides)
    assert t.precision == "32-true"
    args = {k: v for k, v in trainer_arguments(t).items() if k not in ("_target_", "default_root_dir")}
    trainer = L.Trainer(**args, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.precision == "32-true"
