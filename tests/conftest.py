from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("REFEDIT_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def random_parts(tmp_path_factory) -> str:
    """Untrained tiny VAE / CLIP / tokenizer saved in diffusers layout (the same layout SD-1.5 weights use)."""
    from refedit.backbone.foundations import save_random_foundations

    return str(save_random_foundations(tmp_path_factory.mktemp("parts")))


def tiny_backbone(pretrained: str, **overrides) -> dict:
    """The real conf/backbone/tiny.yaml composed with `backbone.pretrained` pointing at saved parts."""
    from refedit.utils.config import compose, to_dict

    ov = [f"backbone.pretrained={pretrained}"] + [f"{k}={v}" for k, v in overrides.items()]
    cfg = compose("train", ov)
    return to_dict(cfg.backbone)
