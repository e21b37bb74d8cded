"""The papers' numbers next to ours, rendered the same way by every notebook.

The papers' tables live in ONE data file, ``reproduce/paper_numbers.yaml`` (see its header for
the layout). This module

- loads one of those tables as a :class:`pandas.DataFrame` (:func:`load_paper_table`),
- stacks our rows and the paper's rows in one frame whose ``source`` column says, for every row,
  whether it is ``"ours"`` or ``"paper (<source>)"`` (:func:`side_by_side`), and
- writes a table as ``<stem>.csv`` and ``<stem>.md`` atomically, the Markdown with a title, a
  "Stand-ins: ..." line (what stands in for the paper's dataset, judge networks, resolution) and
  the paper source (:func:`write_table`).

Paper numbers never appear anywhere but in rows labelled as the paper's: :func:`side_by_side`
refuses "ours" input that already carries paper labels, and the labels are added here, not by
callers.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

from lib.io import AtelierInputError, atomic_write_text
from lib.store import repo_root

PAPER_NUMBERS = Path("reproduce") / "paper_numbers.yaml"
OURS = "ours"
SOURCE_COLUMN = "source"
METHOD_COLUMN = "method"
MISSING = "—"  # how a missing value (NaN / None) is shown in Markdown
_BETTER = {"lower", "higher", None}
_TABLE_FIELDS = ("source", "caption", "dataset", "columns", "rows")


class PaperTableNotFound(AtelierInputError, KeyError):
    """A paper or table that ``paper_numbers.yaml`` does not hold (both a ``KeyError`` and an
    :class:`~lib.io.AtelierInputError`); the message names it and lists what exists."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def paper_label(source: str) -> str:
    """The ``source`` value of a paper row: ``"paper (<source>)"``."""
    return f"paper ({source})"


def paper_numbers_path() -> Path:
    return repo_root() / PAPER_NUMBERS


_CACHE: dict[tuple[str, int, int], dict] = {}


def load_paper_numbers(path: str | Path | None = None) -> dict:
    """The whole YAML as a dict (``{paper: {table: spec}}`` plus ``schema_version``).

    Parsed once per file version (path, size, mtime); each call returns a fresh copy.
    """
    path = Path(path) if path is not None else paper_numbers_path()
    if not path.is_file():
        raise AtelierInputError(f"{path}: paper numbers file not found")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
        except yaml.YAMLError as err:
            raise AtelierInputError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise AtelierInputError(f"{path}: expected a mapping of papers at the top level")
        _CACHE[key] = data
    return copy.deepcopy(_CACHE[key])


def _papers(data: Mapping) -> dict:
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def list_paper_tables(path: str | Path | None = None) -> dict[str, list[str]]:
    """``{paper: [table, ...]}`` for every table in the YAML."""
    return {paper: list(tables) for paper, tables in _papers(load_paper_numbers(path)).items()}


def _norm_paper(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _norm_table(name: str) -> str:
    key = re.sub(r"[\s._()\-]+", "", str(name).strip().lower())
    key = key.replace("figure", "fig")
    return f"table{key}" if key.isdigit() else key


def paper_table_spec(paper: str, table: str, path: str | Path | None = None) -> dict:
    """The raw YAML mapping of one table, validated (see :func:`validate_table_spec`).

    ``paper`` accepts ``"m6_fashion"`` / ``"m6-fashion"``; ``table`` accepts ``"table2"``,
    ``"Table 2"``, ``"2"``, ``"fig6a"`` / ``"Fig. 6(a)"``.
    """
    return _find_table(paper, table, path)[2]


def _find_table(paper: str, table: str, path: str | Path | None) -> tuple[str, str, dict]:
    where = Path(path) if path is not None else paper_numbers_path()
    papers = _papers(load_paper_numbers(where))
    pkey = _norm_paper(paper)
    if pkey not in papers:
        raise PaperTableNotFound(
            f"paper {paper!r} is not in {where}; papers there: {', '.join(sorted(papers))}"
        )
    tables = papers[pkey]
    by_norm = {_norm_table(key): key for key in tables}
    tkey = table if table in tables else by_norm.get(_norm_table(table))
    if tkey is None:
        raise PaperTableNotFound(
            f"table {table!r} of paper {pkey!r} is not in {where}; "
            f"{pkey} tables there: {', '.join(tables)}"
        )
    spec = tables[tkey]
    validate_table_spec(spec, f"{pkey}.{tkey}")
    return pkey, tkey, spec


def validate_table_spec(spec: Any, name: str) -> None:
    """Raise :class:`AtelierInputError` naming ``name`` if ``spec`` breaks the YAML's layout."""
    if not isinstance(spec, dict):
        raise AtelierInputError(f"paper table {name}: expected a mapping, got {type(spec).__name__}")
    for field in _TABLE_FIELDS:
        if field not in spec:
            raise AtelierInputError(f"paper table {name}: missing field '{field}'")
    if not isinstance(spec["source"], str) or not spec["source"].strip():
        raise AtelierInputError(f"paper table {name}: 'source' must be a non-empty string")
    if spec["caption"] is None and not spec.get("caption_note"):
        raise AtelierInputError(f"paper table {name}: null caption needs a 'caption_note' saying why")
    columns = spec["columns"]
    if not isinstance(columns, list) or not columns:
        raise AtelierInputError(f"paper table {name}: 'columns' must be a non-empty list")
    names = []
    for col in columns:
        if not isinstance(col, dict) or "name" not in col or "better" not in col:
            raise AtelierInputError(f"paper table {name}: column {col!r} needs 'name' and 'better'")
        if col["better"] not in _BETTER:
            raise AtelierInputError(
                f"paper table {name}: column {col['name']!r} has better={col['better']!r}; "
                "expected 'lower', 'higher' or null"
            )
        names.append(str(col["name"]))
    labels = [str(label) for label in spec.get("labels") or []]
    clash = set(names) & (set(labels) | {METHOD_COLUMN, SOURCE_COLUMN})
    if len(set(names)) != len(names) or clash:
        raise AtelierInputError(f"paper table {name}: duplicate or reserved column names {sorted(clash) or names}")
    rows = spec["rows"]
    if not isinstance(rows, list):
        raise AtelierInputError(f"paper table {name}: 'rows' must be a list")
    if not rows and not spec.get("plot_only"):
        raise AtelierInputError(f"paper table {name}: no rows (set plot_only: true if the paper has only a plot)")
    allowed = {METHOD_COLUMN, *names, *labels}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get(METHOD_COLUMN), str):
            raise AtelierInputError(f"paper table {name}: row {i} needs a string 'method'")
        where = f"paper table {name}: row {i} ({row[METHOD_COLUMN]!r})"
        stray = set(map(str, row)) - allowed
        if stray:
            raise AtelierInputError(f"{where}: keys {sorted(stray)} are neither columns nor labels")
        for col in names:
            if col not in row:
                raise AtelierInputError(f"{where}: no value for column {col!r} (use null)")
            value = row[col]
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise AtelierInputError(f"{where}: column {col!r} = {value!r} is not a number or null")
        for label in labels:
            value = row.get(label)
            if value is not None and not isinstance(value, (str, numbers.Real)):
                raise AtelierInputError(f"{where}: label {label!r} = {value!r} is not text")


def load_paper_table(paper: str, table: str, path: str | Path | None = None) -> pd.DataFrame:
    """One of the paper's tables: columns ``method``, the labels, then the metric columns (float,
    NaN where the paper has no value).

    ``df.attrs`` holds ``paper``, ``table``, ``source``, ``caption``, ``dataset``, ``resolution``,
    ``hardware``, ``notes``, ``plot_only`` and ``better`` (metric name -> "lower"/"higher"/None).
    A missing paper or table raises :class:`PaperTableNotFound` naming it and listing what exists.
    """
    pkey, tkey, spec = _find_table(paper, table, path)
    names = [str(col["name"]) for col in spec["columns"]]
    labels = [str(label) for label in spec.get("labels") or []]
    records = []
    for row in spec["rows"]:
        record = {METHOD_COLUMN: row[METHOD_COLUMN]}
        record.update({label: row.get(label) for label in labels})
        record.update({col: (math.nan if row[col] is None else float(row[col])) for col in names})
        records.append(record)
    df = pd.DataFrame.from_records(records, columns=[METHOD_COLUMN, *labels, *names])
    for col in names:
        df[col] = df[col].astype("float64")
    df.attrs = {
        "paper": pkey,
        "table": tkey,
        "source": spec["source"],
        "caption": spec["caption"],
        "caption_note": spec.get("caption_note"),
        "dataset": spec["dataset"],
        "resolution": spec.get("resolution"),
        "hardware": spec.get("hardware"),
        "notes": list(spec.get("notes") or []),
        "plot_only": bool(spec.get("plot_only", False)),
        "better": {str(col["name"]): col["better"] for col in spec["columns"]},
    }
    return df


def _require_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AtelierInputError(f"{what} must be a non-empty string, got {value!r}")
    return value.strip()


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, *, stand_ins: str, source: str) -> pd.DataFrame:
    """Our rows, then the paper's rows, in one frame with a leading ``source`` column.

    Our rows get ``source = "ours"``, the paper's ``source = "paper (<source>)"``. Columns are the
    union of both, aligned by name (``method`` first, then the paper's columns in its order, then
    columns only ours has), missing values NaN. ``attrs`` records ``stand_ins``, ``paper_source``
    and the metrics' ``better`` directions (from the paper table's attrs, overridden by
    ``ours.attrs["better"]`` if given). A ``paper`` frame from :func:`load_paper_table` whose
    ``attrs["source"]`` differs from ``source`` is refused (it would be mislabelled).
    """
    stand_ins = _require_text(stand_ins, "stand_ins")
    source = _require_text(source, "source")
    if not isinstance(ours, pd.DataFrame) or not isinstance(paper, pd.DataFrame):
        raise AtelierInputError("side_by_side: 'ours' and 'paper' must be pandas DataFrames")
    label = paper_label(source)
    loaded_from = paper.attrs.get("source")
    if loaded_from is not None and loaded_from != source:
        raise AtelierInputError(
            f"side_by_side: the paper rows come from {loaded_from!r} but would be labelled {source!r}"
        )
    if SOURCE_COLUMN in ours.columns:
        foreign = sorted({str(v) for v in ours[SOURCE_COLUMN].dropna() if str(v) != OURS})
        if foreign:
            raise AtelierInputError(
                f"side_by_side: 'ours' already has rows with source {foreign}; pass only our own rows"
            )
    ours_part = ours.drop(columns=[SOURCE_COLUMN], errors="ignore").reset_index(drop=True)
    paper_part = paper.drop(columns=[SOURCE_COLUMN], errors="ignore").reset_index(drop=True)
    # the paper's layout first (it is the reference table), then any columns only we have
    body = [c for c in paper_part.columns] + [c for c in ours_part.columns if c not in paper_part.columns]
    if METHOD_COLUMN in body:
        body.remove(METHOD_COLUMN)
        body.insert(0, METHOD_COLUMN)
    columns = [SOURCE_COLUMN, *body]
    parts = []
    for part, tag in ((ours_part, OURS), (paper_part, label)):
        frame = part.reindex(columns=body).astype(object).where(part.reindex(columns=body).notna(), None)
        frame.insert(0, SOURCE_COLUMN, tag)
        parts.append(frame)
    records = [rec for frame in parts for rec in frame.to_dict("records")]
    out = pd.DataFrame.from_records(records, columns=columns)
    for col in body:  # restore numeric dtypes where both sides are numeric (or absent)
        sides = [p[col] for p in (ours_part, paper_part) if col in p.columns]
        if sides and all(pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) for s in sides):
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    better = dict(paper.attrs.get("better", {}))
    better.update(ours.attrs.get("better", {}))
    out.attrs = {"stand_ins": stand_ins, "paper_source": source, "better": better}
    return out


def format_value(value: Any) -> str:
    """A cell as Markdown text: integers plain, other numbers to 4 significant digits, missing
    values as an em dash, ``|`` escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    try:
        if pd.isna(value):
            return MISSING
    except (TypeError, ValueError):
        pass
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        if abs(v) >= 1e4:
            return f"{v:.0f}"
        return f"{v:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ").strip()


def to_markdown(df: pd.DataFrame, better: Mapping[str, Any] | None = None) -> str:
    """A GitHub-flavoured Markdown table (no ``tabulate`` needed); numeric columns right-aligned,
    headers of metrics with a known direction marked ↓ (lower is better) or ↑ (higher)."""
    better = dict(better or {})
    arrows = {"lower": " ↓", "higher": " ↑"}
    headers = [format_value(str(c)) + arrows.get(better.get(c), "") for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if num else ":---" for num in numeric) + "|",
    ]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(format_value(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, stem: str | Path, *, title: str, stand_ins: str, source: str) -> dict:
    """Write ``<stem>.csv`` and ``<stem>.md`` atomically; return ``{"csv": path, "md": path}``.

    The Markdown has the title, the table, a ``Stand-ins: ...`` line (what stands in for the
    paper's dataset, judge networks and resolution) and a ``Paper source: ...`` line.
    """
    title = _require_text(title, "title")
    stand_ins = _require_text(stand_ins, "stand_ins")
    source = _require_text(source, "source")
    if not isinstance(df, pd.DataFrame):
        raise AtelierInputError("write_table: 'df' must be a pandas DataFrame")
    stem = Path(stem)
    csv_path = stem.with_name(stem.name + ".csv")
    md_path = stem.with_name(stem.name + ".md")
    has_paper_rows = SOURCE_COLUMN in df.columns and any(
        str(v).startswith("paper (") for v in df[SOURCE_COLUMN].dropna()
    )
    md = [f"# {title}", "", to_markdown(df, df.attrs.get("better")).rstrip("\n"), ""]
    md.append(f"Stand-ins: {stand_ins}")
    md.append("")
    if has_paper_rows:
        md.append(
            f"Paper source: {source}. Rows whose source is \"{paper_label(source)}\" are the paper's "
            f"numbers as printed (transcribed in {PAPER_NUMBERS.as_posix()}); rows whose source is "
            f"\"{OURS}\" are ours."
        )
    else:
        md.append(f"Paper source: {source}. Every row in this table is ours; none is the paper's.")
    atomic_write_text(csv_path, df.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(md_path, "\n".join(md) + "\n")
    return {"csv": csv_path, "md": md_path}
