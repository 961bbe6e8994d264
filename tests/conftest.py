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


@pytest.fixture(scope="session", autouse=True)
def _no_default_stage1_in_tests():
    """`make test` never builds the default foundations (tens of minutes): a test that would is an error."""
    import refedit.foundations.build as fb
    from refedit.foundations import FoundationsConfig

    build, default = fb.build_foundations, FoundationsConfig()

    def guarded(out_dir, cfg):
        if cfg.prior_steps >= default.prior_steps or cfg.vae_steps >= default.vae_steps:
            raise RuntimeError(f"a test asked for the default stage-1 budget into {out_dir}: give it a tiny "
                               f"FoundationsConfig, or point backbone.root at the random_parts fixture")
        return build(out_dir, cfg)

    mp = pytest.MonkeyPatch()
    mp.setattr(fb, "build_foundations", guarded)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def random_parts(tmp_path_factory) -> str:
    """Untrained foundations (toy-sd/, toy-sd-inpainting/, clip/, probe/) in the layout stage 1 writes, the roots
    in diffusers layout as SD-1.5's: point `backbone.root` at it."""
    from refedit.foundations import save_random_foundations
    from refedit.utils.config import compose, to_dict

    unet = to_dict(compose("train", ["paths.output_dir=/tmp/x"]).foundations.unet)
    return str(save_random_foundations(tmp_path_factory.mktemp("parts"), unet=unet))


@pytest.fixture(scope="session")
def one_step_ckpt(random_parts, tmp_path_factory) -> str:
    """A real sd_inpaint checkpoint (one training step on the random parts) for the entry-point tests."""
    from refedit.train import train
    from refedit.utils.config import compose

    out = tmp_path_factory.mktemp("one_step_run")
    cfg = compose("train", [f"backbone.root={random_parts}", "backbone.build_foundations=false",
                            f"paths.output_dir={out}", "logger=none", "trainer.max_steps=1", "data.batch_size=2",
                            "~callbacks.image_logger", "method.sampling.num_steps=2"])
    return train(cfg)


def tiny_backbone(pretrained: str, **overrides) -> dict:
    """The real conf/backbone/tiny.yaml composed with `backbone.root` pointing at saved parts."""
    from refedit.utils.config import compose, to_dict

    ov = [f"backbone.root={pretrained}"] + [f"{k}={v}" for k, v in overrides.items()]
    cfg = compose("train", ov)
    return to_dict(cfg.backbone)
