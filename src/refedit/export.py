"""Export a trained checkpoint: python -m refedit.export ckpt=<path> format=diffusers out=<dir>

The directory is the layout of the method's diffusers pipeline (model_index.json + one folder per component),
loadable with that pipeline's `from_pretrained` (or component by component where diffusers needs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from refedit.utils.cli import parse_kv


def export(ckpt: str, out: str, format: str = "diffusers", use_ema: bool = True) -> Path:
    from refedit.methods import load_method

    if format != "diffusers":
        raise ValueError(f"format={format!r}: only 'diffusers' is supported")
    model = load_method(ckpt, use_ema=use_ema)
    out_dir = Path(out)
    model.export_diffusers(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_kv(sys.argv[1:] if argv is None else argv, required=("ckpt", "out"),
                    optional=("format", "use_ema"), prog="refedit.export")
    try:
        out = export(args["ckpt"], args["out"], args.get("format", "diffusers"),
                     args.get("use_ema", "true").lower() != "false")
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"refedit.export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
