"""The headline numbers of every table as small flat JSON files, for ``dvc metrics show`` (issue 20).

Each stage's ``metrics.json`` holds everything -- lists of table rows, provenance strings, hashes --
which DVC can neither show (it skips lists) nor fit on a screen (it printed 48 lines of up to 122,319
characters). ``reproduce/headlines.yaml`` names, per table, the few numbers the table reports; this
module copies exactly those into ``results/headlines/<name>.json``, one file per table row, with a
small shared set of column names. It quotes numbers, never computes them.

    python -m lib.evaluation.headlines [--spec reproduce/headlines.yaml] [--out results/headlines]
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from lib.io import AtelierInputError, atomic_write_json, read_json
from lib.store import out_root, repo_root

SLUG_MAX = 32  # per label field: keeps `dvc metrics show` under 200 columns


def slug(text: Any) -> str:
    """A file-name part for a table label: lower case, runs of other characters as ``_``."""
    s = re.sub(r"[^a-z0-9.]+", "_", str(text).lower()).strip("_")
    # every table marks its own rows "ours: ..."; in a file name beside the baselines it only costs width
    s = s[len("ours_"):] if s.startswith("ours_") else s
    return (s[:SLUG_MAX].rstrip("_") or "row")


def lookup(doc: Mapping[str, Any], dotted: str) -> Any:
    """``doc['a']['b']`` for ``'a.b'``; a key that itself holds dots (``recall@1``) is tried whole first."""
    if dotted in doc:
        return doc[dotted]
    head, _, rest = dotted.partition(".")
    if rest and isinstance(doc.get(head), Mapping):
        return lookup(doc[head], rest)
    return None


def _number(v: Any) -> float | int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def load_spec(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise AtelierInputError(f"{path}: cannot read the headline spec ({err})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("entries"), list) or not isinstance(spec.get("columns"), list):
        raise AtelierInputError(f"{path}: needs 'columns' (a list) and 'entries' (a list)")
    for i, e in enumerate(spec["entries"]):
        where = f"{path}: entries[{i}]"
        if not isinstance(e, dict) or not {"name", "source", "fields"} <= set(e):
            raise AtelierInputError(f"{where}: needs name, source and fields")
        if not isinstance(e["fields"], dict) or not e["fields"]:
            raise AtelierInputError(f"{where}.fields: a non-empty mapping key -> column")
        unknown = sorted(set(e["fields"].values()) - set(spec["columns"]))
        if unknown:
            raise AtelierInputError(f"{where}.fields: column(s) {unknown} not in 'columns' {spec['columns']}")
        if "rows" in e and not isinstance(e.get("label"), list):
            raise AtelierInputError(f"{where}: 'rows' needs a 'label' (the row fields that name each file; "
                                    "[] when the rows are a mapping whose keys name them)")
    return spec


def _sources(pattern: str, root: Path) -> Iterator[tuple[str, Path]]:
    if "*" not in pattern:
        yield "", root / pattern
        return
    for path in sorted(root.glob(pattern)):
        yield path.parent.name, path


def headlines(spec: Mapping[str, Any], root: Path) -> dict[str, dict[str, float | int]]:
    """``{name: {column: number}}`` for every entry of ``spec`` whose source exists under ``root``;
    files absent in a profile (a stage not run) and rows without any of the numbers are left out."""
    out: dict[str, dict[str, float | int]] = {}
    for e in spec["entries"]:
        split = "{field}" in e["name"]
        for folder, path in _sources(e["source"], root):
            if not path.is_file():
                continue
            doc = read_json(path)
            body = doc.get("metrics", doc)
            if body.get("skipped") is True:
                continue
            if "rows" in e:
                rows = lookup(body, e["rows"]) or []
                if isinstance(rows, Mapping):  # {label: row}: the key names the row
                    items = [(slug(k), r) for k, r in rows.items() if isinstance(r, Mapping)]
                else:
                    items = [("_".join(slug(r.get(k)) for k in e["label"]), r) for r in rows if isinstance(r, Mapping)]
            else:
                items = [("", body)]
            for label, row in items:
                for key, column in e["fields"].items():
                    value = _number(lookup(row, key))
                    if value is None:
                        continue
                    name = e["name"].format(dir=folder, label=label, field=slug(key.split(".")[-1]))
                    cell = out.setdefault(name, {})
                    if column in cell and not split:
                        raise AtelierInputError(f"headline {name!r}: column {column!r} filled twice "
                                                f"(two rows share the label, or two fields the column)")
                    cell[column] = value
    return out


def write(spec_path: Path, out_dir: Path, root: Path | None = None) -> dict[str, dict]:
    """Write every headline file under ``out_dir`` (removing ones no longer produced)."""
    root = root or out_root()
    table = headlines(load_spec(spec_path), root)
    if out_dir.is_dir():
        shutil.rmtree(out_dir)
    for name, cell in sorted(table.items()):
        atomic_write_json(out_dir / f"{name}.json", cell)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=repo_root() / "reproduce" / "headlines.yaml")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or out_root() / "results" / "headlines"
    try:
        table = write(args.spec, out)
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[headlines] {len(table)} files -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
