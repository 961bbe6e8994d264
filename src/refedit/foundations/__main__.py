"""Build (or find cached) the stage-1 foundations and print their held-out quality:
python -m refedit.foundations [foundations=quick] [foundations.stage1.seed=1] (make foundations)."""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from refedit.utils.cli import report_input_errors
from refedit.utils.config import CONFIG_DIR


def summary(info: dict) -> str:
    parts = info.get("parts", {})
    lines = [f"foundations {info.get('version')} built in {info.get('seconds', 0) / 60:.1f} min "
             f"on {info.get('device')} ({info.get('threads')} threads)"]
    for name, p in parts.items():
        q = {k: v for k, v in p.items() if k not in ("curve",)}
        lines.append(f"  {name}: {json.dumps(q)}")
    for point in parts.get("text_to_image_unet", {}).get("curve", []):
        lines.append(f"  prior at step {point['step']} ({point['stage1_minutes']} min of stage 1): "
                     f"conditional {point['conditional']}, unconditional {point['unconditional']}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@report_input_errors("refedit.foundations")
def main(cfg: DictConfig) -> None:
    from refedit.foundations import ensure_foundations, foundations_info, stage1_config

    out = ensure_foundations(cfg.paths.foundations_dir, stage1_config(cfg.foundations))
    print(summary(foundations_info(out)))
    print(f"foundations: {out}")


if __name__ == "__main__":
    main()
