"""Assemble every stage's tables, metrics and key figures into one report page.

Sources, all produced by earlier stages: ``results/<stage>/*.md`` tables (written by
:func:`lib.evaluation.tables.write_table`, paper rows labelled as the paper's), ``results/<stage>/metrics.json``
(with provenance) and ``artifacts/figures/<stage>/*.png``. Nothing here computes or types a number:
the report only quotes files.

The figures live in the DVC cache (``artifacts/`` is not in git), so the report links compressed
copies it writes to ``results/report/figures/<stage>/`` -- palette PNGs of at most
:data:`MAX_FIGURE_BYTES` each and :data:`MAX_TOTAL_BYTES` in all, kept in git -- and a clone shows
every picture without running anything (issue 20).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lib.io import AtelierInputError, atomic_write_bytes, atomic_write_text
from lib.store import out_root

#: budgets of the git-tracked figure copies (issue 20: <= 300 KB each, <= 8 MB in all)
MAX_FIGURE_BYTES = 300_000
MAX_TOTAL_BYTES = 8_000_000


@dataclass
class Section:
    stage: str
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    metrics: dict | None = None


def collect(root: Path | None = None, skip: tuple[str, ...] = ("report",)) -> list[Section]:
    """One :class:`Section` per stage folder under ``results/``, in stage order."""
    root = root or out_root()
    sections = []
    for stage_dir in sorted((root / "results").glob("*")):
        if not stage_dir.is_dir() or stage_dir.name in skip:
            continue
        sec = Section(stage_dir.name, tables=sorted(stage_dir.glob("*.md")))
        metrics_file = stage_dir / "metrics.json"
        if metrics_file.is_file():
            sec.metrics = json.loads(metrics_file.read_text())
        fig_dir = root / "artifacts" / "figures" / stage_dir.name
        if fig_dir.is_dir():
            sec.figures = sorted(fig_dir.glob("*.png"))
        sections.append(sec)
    return sections


def _flat_scalars(d: dict, prefix: str = "") -> dict[str, float | int | str]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_scalars(value, name + " / "))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            out[name] = value
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def compress_png(src: Path, max_bytes: int = MAX_FIGURE_BYTES) -> bytes:
    """``src`` as a 256-colour palette PNG of at most ``max_bytes``, halving the area until it fits.

    Matplotlib figures are flat colours and anti-aliased lines, which a 256-colour palette keeps
    nearly exact at a fraction of the RGBA size. Deterministic: the same file gives the same bytes.
    """
    try:
        with Image.open(src) as im:
            im.load()
            rgba = im.convert("RGBA")
    except (OSError, ValueError) as err:
        raise AtelierInputError(f"{src}: not a readable image ({err})") from None
    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    scale = 1.0
    while True:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        frame = rgb if size == rgb.size else rgb.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        frame.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or min(size) <= 16:
            return buf.getvalue()
        scale *= 0.7071  # half the area per try


def export_figures(sections: list[Section], figure_dir: Path) -> dict[Path, Path]:
    """Write the compressed copy of every section figure to ``figure_dir/<stage>/<name>.png``;
    returns ``{original: copy}``. The per-figure budget shrinks so that the copies fit
    :data:`MAX_TOTAL_BYTES` together; copies of figures no longer produced are removed."""
    figures = [(sec.stage, fig) for sec in sections for fig in sec.figures]
    per_figure = min(MAX_FIGURE_BYTES, MAX_TOTAL_BYTES // max(1, len(figures)))
    copies = {}
    for stage, fig in figures:
        dest = figure_dir / stage / fig.name
        atomic_write_bytes(dest, compress_png(fig, per_figure))
        copies[fig] = dest
    if figure_dir.is_dir():
        for old in figure_dir.glob("*/*.png"):
            if old not in copies.values():
                old.unlink()
    return copies


def render_markdown(sections: list[Section], report_dir: Path, root: Path | None = None,
                    copies: dict[Path, Path] | None = None) -> str:
    """The report as Markdown; figure links are relative to ``report_dir`` and point at the
    git-tracked ``copies`` of the figures where given (else at the originals)."""
    root = root or out_root()
    lines = ["# Atelier report", "",
             "Generated by the `report` stage from the files of every earlier stage; no number here is typed by hand.",
             "Rows labelled `paper (...)` are the papers' published numbers; every other row is ours.", ""]
    for sec in sections:
        lines += [f"## {sec.stage}", ""]
        for table in sec.tables:
            body = table.read_text().strip().splitlines()
            # demote the table's own title one level below the stage heading
            lines += [("#" + ln) if ln.startswith("#") else ln for ln in body] + [""]
        if sec.metrics:
            prov = sec.metrics.get("provenance", {})
            scalars = _flat_scalars(sec.metrics.get("metrics", {}))
            if scalars:
                lines += ["<details><summary>metrics.json (scalars)</summary>", "", "| metric | value |", "|---|---|"]
                lines += [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()]
                lines += ["", "</details>", ""]
            lines += [f"*Provenance:* profile `{prov.get('profile')}`, seed `{prov.get('seed')}`, "
                      f"git `{prov.get('git_revision')}`, device `{prov.get('device', {}).get('device')}`.", ""]
        for fig in sec.figures:
            rel = Path(os.path.relpath((copies or {}).get(fig, fig), report_dir)).as_posix()
            lines += [f"![{sec.stage}: {fig.stem}]({rel})", ""]
    return "\n".join(lines) + "\n"


def write_report(report_dir: Path | None = None) -> Path:
    root = out_root()
    report_dir = report_dir or root / "results" / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "report.md"
    sections = collect(root)
    copies = export_figures(sections, report_dir / "figures")
    atomic_write_text(path, render_markdown(sections, report_dir, root, copies))
    return path
