"""What every entry point shares on the command line: key=value parsing for the small tools (edit, export)
that need no Hydra config, one-line reports of input errors, and the check that an output path is writable."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class ReportedError(Exception):
    """An error in what the user gave (a file, an option, a value) whose message names it. Every entry point
    prints it as one line, `<prog>: error: <message>`, without a traceback, and exits with status 2; anything
    else is a bug and keeps its traceback."""


class UsageError(ReportedError, ValueError):
    pass


def first_line(e: BaseException) -> str:
    """The message's first line; for an error re-raised from a DataLoader worker (its message is the worker's
    traceback) the line that names the error."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if "Original Traceback" in text:
        return lines[-1].strip()
    return lines[0].strip()


def _input_error(e: BaseException | None, extra: tuple[type[BaseException], ...]) -> BaseException | None:
    """`e`, or the error it was raised from (Hydra's instantiate wraps the original), when that is an input
    error: a ReportedError, a missing file, an unset mandatory config value (`???`), or one of `extra`."""
    from omegaconf.errors import MissingMandatoryValue

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (ReportedError, FileNotFoundError, MissingMandatoryValue, *extra)):
            return e
        seen.add(id(e))
        e = e.__cause__
    return None


def report_input_errors(prog: str, extra: tuple[type[BaseException], ...] = ()) -> Callable:
    """Decorate an entry point (a plain `main(argv)` or the function under `@hydra.main`): an input error
    becomes one line on stderr and exit status 2 (SystemExit passes through Hydra, which would print the
    stack). `extra`: error types that count as input errors for this tool as well."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                known = _input_error(e, extra)
                if known is None:
                    raise
                print(f"{prog}: error: {first_line(known)}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None

        return wrapped

    return decorate


def check_writable(path: str | os.PathLike, option: str, directory: bool = False) -> Path:
    """Raise UsageError naming `option` unless `path` can be written (created where missing): run before the
    work, so a long job never ends on a failed save. Nothing is created."""
    p = Path(path).expanduser()
    if p.exists():
        if directory != p.is_dir():
            raise UsageError(f"{option}={path}: exists and is {'not ' if directory else ''}a directory")
        if not os.access(p, os.W_OK | (os.X_OK if directory else 0)):
            raise UsageError(f"{option}={path}: not writable")
        return p
    parent = p.parent.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option}={path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option}={path}: cannot create it, {parent} is not writable")
    return p


def parse_kv(argv: Sequence[str], *, required: Sequence[str] = (), optional: Sequence[str] = ()) -> dict[str, str]:
    allowed = set(required) | set(optional)
    out: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"argument '{arg}' is not key=value (allowed keys: {', '.join(sorted(allowed))})")
        if key not in allowed:
            raise UsageError(f"unknown option '{key}' (allowed: {', '.join(sorted(allowed))})")
        out[key] = value
    missing = [k for k in required if k not in out]
    if missing:
        raise UsageError(f"missing required option(s) {', '.join(f'{k}=' for k in missing)}")
    return out
