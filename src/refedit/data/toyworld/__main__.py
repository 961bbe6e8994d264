"""CLI: ``python -m refedit.data.toyworld preview --out sheet.png`` | ``export --out DIR --n 20``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refedit.data.toyworld", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("preview", help="render a contact sheet of every task")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=3, help="samples per task")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--cell", type=int, default=None, help="displayed size of one image (px)")
    e = sub.add_parser("export", help="write PNG/MP4/COCO/COCOEE files (layout: refedit.data.toyworld.export)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--n", type=int, default=20, help="number of seeds (split indices 0..n-1)")
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--frames", type=int, default=8)
    e.add_argument("--split", default="benchmark", help="seed range for images and clips")
    e.add_argument("--reference-size", type=int, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "preview":
        from .preview import preview

        path = preview(args.out, size=args.size, n=args.n, start_seed=args.seed, frames=args.frames,
                       cell=args.cell)
        print(f"toyworld: wrote {path}")
    else:
        from .export import export

        manifest = export(args.out, n=args.n, size=args.size, frames=args.frames, split=args.split,
                          reference_size=args.reference_size)
        print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
