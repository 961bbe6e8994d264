from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

TEST_THREADS = int(os.environ.get("REFEDIT_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _same_global_state_for_every_test():
    """Each test starts from the same global state, whatever ran before it in this worker (xdist hands tests to
    workers in no fixed order): seeded global RNGs, TEST_THREADS torch threads, and afterwards the environment
    and torch's deterministic-algorithms switch as they were (in-process training sets PL_GLOBAL_SEED,
    PL_SEED_WORKERS and, with trainer.deterministic, that switch)."""
    env = dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    torch.set_num_threads(TEST_THREADS)
    yield
    os.environ.clear()
    os.environ.update(env)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_num_threads(TEST_THREADS)


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
