"""The toy SD prior's quality against minutes of stage 1, from foundations.json files (one line per build):
python experiments/foundations/plot_curve.py <foundations dir>... --out curve.png"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("curve.png"))
    args = ap.parse_args()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for d in args.dirs:
        info = json.loads((d / "foundations.json").read_text())
        curve = info["parts"]["text_to_image_unet"]["curve"]
        seed = info["config"]["seed"]
        for ax, attr in zip(axes, ("colour", "shape", "pattern")):
            ax.plot([c["stage1_minutes"] for c in curve], [c["conditional"][attr] for c in curve], "o-",
                    label=f"{d.name} (seed {seed}) conditional")
            ax.plot([c["stage1_minutes"] for c in curve], [c["unconditional"][attr] for c in curve], "x--",
                    label=f"{d.name} unconditional")
            ax.axhline(curve[0]["chance"][attr], color="grey", lw=0.8)
            ax.set_title(f"{attr} accuracy (grey: chance)")
            ax.set_xlabel("minutes of stage 1 (this machine)")
        print(d, [(c["step"], c["stage1_minutes"], c["conditional"]) for c in curve])
    axes[0].set_ylabel("probe accuracy of generated objects")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
