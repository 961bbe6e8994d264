"""Export a trained checkpoint: python -m refedit.export ckpt=<path> format=diffusers out=<dir>

The directory is the layout of the method's diffusers pipeline (model_index.json + one folder per component),
loadable with that pipeline's `from_pretrained` (or component by component where diffusers needs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from refedit.utils.cli import UsageError, check_writable, parse_kv, report_input_errors


def export(ckpt: str, out: str, format: str = "diffusers", use_ema: bool = True) -> Path:
    """Write the checkpoint's pipeline to `out` in diffusers layout, weights as safetensors (no pickle)."""
    from refedit.methods import load_method

    if format != "diffusers":
        raise UsageError(f"format={format!r}: only 'diffusers' is supported")
    if not Path(ckpt).is_file():
        raise UsageError(f"ckpt={ckpt}: no such file")
    out_dir = check_writable(out, "out", directory=True)
    model = load_method(ckpt, use_ema=use_ema)
    model.export_diffusers(out_dir)
    return out_dir


# as refedit.edit: one checkpoint in, one directory out, so a ValueError or RuntimeError is about those
@report_input_errors("refedit.export", extra=(ValueError, RuntimeError))
def main(argv: list[str] | None = None) -> int:
    args = parse_kv(sys.argv[1:] if argv is None else argv, required=("ckpt", "out"), optional=("format", "use_ema"))
    out = export(args["ckpt"], args["out"], args.get("format", "diffusers"),
                 args.get("use_ema", "true").lower() != "false")
    print(f"exported: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
