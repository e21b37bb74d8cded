"""Compare two metrics JSON files, or two trees of them, ignoring what legitimately varies per run.

Issue 8, guarantee (4): with a fixed seed, the smoke profile run twice on CPU gives identical
metrics. Timings, memory, timestamps and the git revision differ from run to run by nature, so
keys whose *name* matches :data:`IGNORED` are skipped wherever they occur (at any depth); every
other value must be equal -- exactly, or within ``--rtol`` for floats.

    .venv/bin/python reproduce/compare_metrics.py A B [--rtol 0] [--ignore REGEX ...]

``A`` and ``B`` are two JSON files, or two folders (e.g. the ``results/`` of two smoke runs), in
which case every ``*.json`` below them is compared by relative path and a file present on one
side only is a difference. Prints one line per difference (``file: dotted.key: a != b``); exit
status 0 when there is none, 1 otherwise, 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable

#: key names (full match, case-insensitive) that hold per-run facts rather than results
IGNORED = (
    r".*seconds.*", r".*_s", r".*_sec", r".*elapsed.*", r".*duration.*", r"wall.*", r".*_time",
    r"peak_rss.*", r".*rss_mb", r"created", r".*timestamp.*", r"date", r".*_at", r"git_revision",
)


def _ignored(key: str, patterns: Iterable[re.Pattern]) -> bool:
    return any(p.fullmatch(key) for p in patterns)


def diff_values(a: Any, b: Any, where: str = "", *, patterns: Iterable[re.Pattern] | None = None,
                rtol: float = 0.0) -> list[str]:
    """Differences between two decoded JSON values, as ``dotted.key: a != b`` lines."""
    patterns = list(patterns if patterns is not None else compile_patterns())
    here = where or "<root>"
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if _ignored(str(key), patterns):
                continue
            sub = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                out.append(f"{sub}: only in {'B' if key not in a else 'A'}")
            else:
                out += diff_values(a[key], b[key], sub, patterns=patterns, rtol=rtol)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{here}: list of {len(a)} != list of {len(b)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff_values(x, y, f"{where}[{i}]", patterns=patterns, rtol=rtol)
        return out
    if _numbers_equal(a, b, rtol):
        return []
    return [f"{here}: {_short(a)} != {_short(b)}"]


def _numbers_equal(a: Any, b: Any, rtol: float) -> bool:
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        return False
    if _is_number(a) and _is_number(b):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return a == b or (rtol > 0 and math.isclose(a, b, rel_tol=rtol, abs_tol=0.0))
    return a == b


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _short(x: Any) -> str:
    text = json.dumps(x, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def compile_patterns(extra: Iterable[str] = ()) -> list[re.Pattern]:
    return [re.compile(p, re.IGNORECASE) for p in (*IGNORED, *extra)]


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise SystemExit(_fail(f"{path}: cannot read JSON ({str(err)[:200]})"))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def compare(a: Path, b: Path, *, extra_ignored: Iterable[str] = (), rtol: float = 0.0) -> list[str]:
    """Differences between two JSON files or two folders of them (see the module docstring)."""
    patterns = compile_patterns(extra_ignored)
    if a.is_dir() and b.is_dir():
        files_a = {p.relative_to(a) for p in a.rglob("*.json")}
        files_b = {p.relative_to(b) for p in b.rglob("*.json")}
        out = [f"{rel}: only in {'A' if rel in files_a else 'B'}" for rel in sorted(files_a ^ files_b)]
        for rel in sorted(files_a & files_b):
            out += [f"{rel}: {d}" for d in diff_values(_load(a / rel), _load(b / rel), patterns=patterns, rtol=rtol)]
        return out
    if a.is_file() and b.is_file():
        return [f"{a.name}: {d}" for d in diff_values(_load(a), _load(b), patterns=patterns, rtol=rtol)]
    raise SystemExit(_fail(f"{a} and {b} must both be JSON files or both be folders"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    parser.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                        help="also ignore keys whose name fully matches REGEX (repeatable)")
    args = parser.parse_args(argv)
    differences = compare(args.a, args.b, extra_ignored=args.ignore, rtol=args.rtol)
    for line in differences:
        print(line)
    if differences:
        print(f"{len(differences)} difference(s)", file=sys.stderr)
        return 1
    print("identical (ignoring: " + ", ".join([*IGNORED, *args.ignore]) + ")", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
