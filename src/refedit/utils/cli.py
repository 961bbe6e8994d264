"""key=value command lines for the small tools (edit, export) that do not need a Hydra config."""

from __future__ import annotations

from collections.abc import Sequence


class UsageError(ValueError):
    pass


def parse_kv(argv: Sequence[str], *, required: Sequence[str] = (), optional: Sequence[str] = (),
             prog: str = "refedit") -> dict[str, str]:
    allowed = set(required) | set(optional)
    out: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"{prog}: argument '{arg}' is not key=value (allowed keys: {', '.join(sorted(allowed))})")
        if key not in allowed:
            raise UsageError(f"{prog}: unknown option '{key}' (allowed: {', '.join(sorted(allowed))})")
        out[key] = value
    missing = [k for k in required if k not in out]
    if missing:
        raise UsageError(f"{prog}: missing required option(s) {', '.join(f'{k}=' for k in missing)}")
    return out
