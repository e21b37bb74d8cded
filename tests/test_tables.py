"""reproduce/paper_numbers.yaml (the papers' numbers) and lib/evaluation/tables.py (rendering them next to ours)."""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lib.evaluation import tables
from lib.io import AtelierInputError
from lib.store import repo_root

YAML_PATH = repo_root() / "reproduce" / "paper_numbers.yaml"

# Every table the brief asks for (MoVQ's Fig. 6 panels included; (c) is plot-only).
REQUIRED = {
    "m6_fashion": ["table2", "table3", "table4"],
    "movq": ["table1", "table2", "table3", "fig6a", "fig6b", "fig6c"],
    "muse": ["table1", "table2", "table3"],
    "unifashion": ["table1", "table2", "table3", "table4", "table5"],
}
SEED_FILES = {
    "m6_fashion": "m6-fashion.txt",
    "movq": "movq.txt",
    "muse": "muse.txt",
    "unifashion": "unifashion.txt",
}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))


def _all_tables(raw):
    for paper, tabs in raw.items():
        if isinstance(tabs, dict):
            for name, spec in tabs.items():
                yield paper, name, spec


def _value(paper, table, method, column, **labels):
    df = tables.load_paper_table(paper, table)
    hit = df[df["method"] == method]
    for key, val in labels.items():
        hit = hit[hit[key] == val]
    assert len(hit) == 1, f"{paper}.{table}: expected one row {method!r} {labels}, found {len(hit)}"
    return float(hit.iloc[0][column])


# --------------------------------------------------------------------------------------------
# the YAML itself


def test_every_required_table_exists_with_required_fields(raw):
    for paper, names in REQUIRED.items():
        assert paper in raw, f"paper {paper} missing from {YAML_PATH}"
        for name in names:
            assert name in raw[paper], f"{paper}.{name} missing"
            spec = raw[paper][name]
            for field in ("source", "caption", "dataset", "columns", "rows"):
                assert field in spec, f"{paper}.{name}: no '{field}'"
            assert isinstance(spec["source"], str) and spec["source"].strip()
            assert spec["caption"] is None or spec["caption"].strip()
            if spec["caption"] is None:
                assert spec.get("caption_note"), f"{paper}.{name}: null caption without caption_note"
            assert spec["columns"], f"{paper}.{name}: no columns"
            for col in spec["columns"]:
                assert set(col) >= {"name", "better"}, f"{paper}.{name}: column {col}"
                assert col["better"] in ("lower", "higher", None), f"{paper}.{name}: {col}"
            if spec.get("plot_only"):
                assert spec["rows"] == []
            else:
                assert len(spec["rows"]) >= 3, f"{paper}.{name}: suspiciously few rows"


def test_every_row_has_every_column_as_number_or_null(raw):
    count = 0
    for paper, name, spec in _all_tables(raw):
        cols = [c["name"] for c in spec["columns"]]
        labels = spec.get("labels") or []
        assert not set(cols) & set(labels), f"{paper}.{name}: a name is both column and label"
        for row in spec["rows"]:
            assert isinstance(row.get("method"), str) and row["method"], f"{paper}.{name}: {row}"
            stray = set(row) - {"method", *cols, *labels}
            assert not stray, f"{paper}.{name} {row['method']}: unknown keys {stray}"
            for col in cols:
                assert col in row, f"{paper}.{name} {row['method']}: no value (or null) for {col}"
                value = row[col]
                assert value is None or (
                    isinstance(value, numbers.Real) and not isinstance(value, bool)
                ), f"{paper}.{name} {row['method']}: {col} = {value!r} is not a number or null"
                count += 1
    assert count > 300  # the four papers' tables hold well over 300 cells


def test_every_yaml_table_loads(raw):
    for paper, name, spec in _all_tables(raw):
        df = tables.load_paper_table(paper, name)
        metrics = [c["name"] for c in spec["columns"]]
        assert list(df.columns[-len(metrics):]) == metrics
        assert len(df) == len(spec["rows"])
        for col in metrics:
            assert pd.api.types.is_float_dtype(df[col])
        assert df.attrs["source"] == spec["source"]


def test_speed_tables_state_hardware(raw):
    muse3 = raw["muse"]["table3"]
    assert "TPUv4" in muse3["hardware"] and "A100" in muse3["hardware"]
    assert {r["hardware"] for r in muse3["rows"]} == {"TPUv4", "A100"}
    assert "hardware" in raw["m6_fashion"]["table2"]  # the paper does not state it: null + note
    assert any("hardware" in n for n in raw["m6_fashion"]["table2"]["notes"])


# --------------------------------------------------------------------------------------------
# spot checks against the papers' text (values read off the seeds by hand)


def test_spot_checks_m6_fashion():
    assert _value("m6_fashion", "table2", "M6-Fashion (Ours)", "speed_s") == 1.02
    assert _value("m6_fashion", "table2", "Taming Transformer", "speed_s") == 8.7
    assert _value("m6_fashion", "table2", "StyleCLIP", "speed_s") == 20 * 60  # printed "20min"
    assert _value("m6_fashion", "table2", "M6-Fashion (Ours)", "FID") == 5.69
    assert _value("m6_fashion", "table3", "StyleGAN", "FID") == 10.06
    assert _value("m6_fashion", "table3", "M6-Fashion (Ours)", "IS") == 4.14
    assert _value("m6_fashion", "table4", "Product Quantization", "FID") == 4.38
    assert _value("m6_fashion", "table4", "Residual Quantization", "IS") == 4.21


def test_spot_checks_movq():
    assert _value("movq", "table1", "Mo-VQGAN (Ours)", "rFID", dataset="FFHQ") == 2.26
    assert _value("movq", "table1", "Mo-VQGAN (Ours)", "rFID", dataset="ImageNet") == 1.12
    assert _value("movq", "table1", "VQGAN", "SSIM", dataset="FFHQ") == 0.6641
    assert math.isnan(_value("movq", "table1", "ViT-VQGAN", "PSNR", dataset="ImageNet"))
    assert _value("movq", "table2", "Mo-VQGAN (Ours)-mask", "FID") == 8.78
    assert _value("movq", "table2", "Mo-VQGAN (Ours)-mask", "steps") == 8
    assert _value("movq", "table3", "MaskGIT", "IS") == 182.1
    assert _value("movq", "table3", "Mo-VQGAN (Ours)-mask", "steps") == 12
    assert _value("movq", "fig6b", "MoVQ", "rFID", codebook_size=16384.0) == 1.05
    fig6c = tables.load_paper_table("movq", "fig6c")
    assert fig6c.attrs["plot_only"] and fig6c.empty


def test_spot_checks_muse():
    assert _value("muse", "table3", "Muse-3B", "time_s", resolution="256x256") == 0.5
    assert _value("muse", "table3", "Muse-3B", "time_s", resolution="512x512") == 1.3
    assert _value("muse", "table3", "Parti-3B", "time_s") == 6.4
    assert _value("muse", "table2", "Muse-3B", "Zero-shot FID-30K") == 7.88
    assert _value("muse", "table2", "Parti-3B", "Zero-shot FID-30K") == 8.10
    assert _value("muse", "table1", "Muse (base + super-res)", "FID") == 6.06
    assert _value("muse", "table1", "Muse (base model)", "CLIP") == 0.25


def test_spot_checks_unifashion():
    assert _value("unifashion", "table1", "UniFashion (Ours)", "Mean") == 87.55
    assert _value("unifashion", "table1", "FAME-ViL", "I2T R@1") == 65.94
    assert _value("unifashion", "table2", "UniFashion", "CIDEr") == 169.5
    assert _value("unifashion", "table3", "UniFashion (Ours)", "FID", task="try-on") == 8.42
    assert _value("unifashion", "table3", "UniFashion (Ours)", "CLIP-S", task="fashion design") == 31.29
    assert _value("unifashion", "table4", "UniFashion", "Avg.") == 67.93
    assert _value("unifashion", "table4", "SPRC", "Dress R@10") == 49.18
    assert _value("unifashion", "table5", "Base+LLM+diff.", "FIG") == 12.43


def test_cross_table_consistency():
    """Numbers the papers repeat across tables agree here too (catches transcription typos)."""
    uni = "UniFashion (Ours)"
    full = "Base+LLM+diff."
    assert _value("unifashion", "table5", full, "CMR") == _value("unifashion", "table1", uni, "Mean")
    assert _value("unifashion", "table5", full, "CIR") == _value("unifashion", "table4", "UniFashion", "Avg.")
    assert _value("unifashion", "table5", full, "FIC") == _value("unifashion", "table2", "UniFashion", "BLEU-4")
    assert _value("movq", "fig6a", "w/ Fourier features", "rFID") == _value(
        "movq", "table1", "Mo-VQGAN (Ours)", "rFID", dataset="FFHQ")
    assert _value("movq", "fig6a", "Baseline VQGAN", "FID") == _value(
        "movq", "table2", "VQGAN (w/ top-k sampling)", "FID")
    assert _value("movq", "fig6b", "VQGAN", "rFID", codebook_size=16384.0) == _value(
        "movq", "table1", "VQGAN", "rFID", dataset="ImageNet", codebook_size=16384.0)


def test_unifashion_row_means_match_printed_means():
    t1 = tables.load_paper_table("unifashion", "table1")
    recalls = [c for c in t1.columns if "R@" in c]
    assert len(recalls) == 6
    for _, row in t1.iterrows():
        assert abs(row[recalls].mean() - row["Mean"]) < 0.006, row["method"]
    t4 = tables.load_paper_table("unifashion", "table4")
    for _, row in t4.iterrows():
        if row["method"] in ("TG-CIR", "SPRC"):  # printed 58.05 / 64.85, not 62.21 / 64.95 (noted in YAML)
            continue
        assert abs((row["Average R@10"] + row["Average R@50"]) / 2 - row["Avg."]) < 0.006, row["method"]


def _seeds_dir() -> Path | None:
    root = repo_root()
    for cand in (root / "shared" / "seeds", root.parent / "shared" / "seeds"):
        if cand.is_dir():
            return cand
    return None


def _renderings(value: float) -> set[str]:
    """Ways the paper may print ``value`` (0.3 as "0.3" or "0.30"), never a rounded-off one."""
    out = {f"{value:.{d}f}" for d in range(5)} | {repr(value)}
    return {r for r in out if float(r) == value}


def test_every_number_appears_in_the_seed_text(raw):
    """Each transcribed value is printed somewhere in its paper's extracted text (unit
    conversions excepted), so a typo in the YAML fails here."""
    seeds = _seeds_dir()
    if seeds is None:
        pytest.skip("paper seeds (shared/seeds) not available")
    converted = {("m6_fashion", "table2", "speed_s")}  # "20min" -> 1200 s
    for paper, name, spec in _all_tables(raw):
        text = (seeds / SEED_FILES[paper]).read_text(encoding="utf-8")
        for row in spec["rows"]:
            for col in (c["name"] for c in spec["columns"]):
                value = row[col]
                if value is None or (paper, name, col) in converted:
                    continue
                pattern = "|".join(re.escape(r) for r in sorted(_renderings(float(value))))
                assert re.search(rf"(?<![\d.])(?:{pattern})(?![\d])", text), (
                    f"{paper}.{name} {row['method']} {col}={value} not found in {SEED_FILES[paper]}"
                )


# --------------------------------------------------------------------------------------------
# lib/evaluation/tables.py


def test_missing_paper_or_table_raises_naming_it():
    with pytest.raises(AtelierInputError, match=r"paper 'dalle'.*m6_fashion.*unifashion"):
        tables.load_paper_table("dalle", "table1")
    with pytest.raises(KeyError, match=r"table 'table9' of paper 'movq'.*fig6a"):
        tables.load_paper_table("movq", "table9")


def test_table_and_paper_names_are_forgiving():
    a = tables.load_paper_table("m6_fashion", "table2")
    b = tables.load_paper_table("M6-Fashion", "Table 2")
    c = tables.load_paper_table("m6-fashion", "2")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert tables.load_paper_table("movq", "Fig. 6(a)").attrs["table"] == "fig6a"


def test_malformed_yaml_is_refused(tmp_path):
    bad = tmp_path / "paper_numbers.yaml"
    bad.write_text(
        "p:\n  t:\n    source: P Table 1\n    caption: c\n    dataset: d\n"
        "    columns: [{name: FID, better: lower}]\n    rows: [{method: m, FID: '12.3'}]\n"
    )
    with pytest.raises(AtelierInputError, match=r"p\.t.*'m'.*FID.*not a number"):
        tables.load_paper_table("p", "t", path=bad)
    bad.write_text(bad.read_text().replace("FID: '12.3'", "IS: 3.0"))
    with pytest.raises(AtelierInputError, match=r"p\.t"):
        tables.load_paper_table("p", "t", path=bad)


def _ours():
    return pd.DataFrame({"method": ["tiny NAR (ours)"], "FID": [81.5], "IS": [2.25], "extra": [3.0]})


def test_side_by_side_labels_paper_rows_and_keeps_ours():
    paper = tables.load_paper_table("m6_fashion", "table2")
    ours = _ours()
    out = tables.side_by_side(ours, paper, stand_ins="Fashion-MNIST for M2C-Fashion", source=paper.attrs["source"])
    assert out.columns[0] == "source" and out.columns[1] == "method"
    assert len(out) == len(ours) + len(paper)
    assert list(out["source"]) == ["ours"] + ["paper (M6-Fashion Table 2)"] * len(paper)
    mine = out[out["source"] == "ours"].iloc[0]
    assert mine["FID"] == 81.5 and mine["extra"] == 3.0 and math.isnan(mine["speed_s"])
    theirs = out[out["source"] != "ours"]
    assert theirs["extra"].isna().all()
    assert theirs.set_index("method").loc["M6-Fashion (Ours)", "speed_s"] == 1.02
    assert set(out.columns) == {"source", *ours.columns, *paper.columns}
    assert out.attrs["stand_ins"] == "Fashion-MNIST for M2C-Fashion"
    assert out.attrs["better"]["FID"] == "lower"
    # none of the paper's numbers is in an "ours" row
    assert not (out[out["source"] == "ours"]["FID"].isin(paper["FID"])).any()


def test_side_by_side_refuses_mislabelled_ours_and_blank_stand_ins():
    paper = tables.load_paper_table("muse", "table3")
    already = tables.side_by_side(_ours(), paper, stand_ins="x", source="Muse Table 3")
    with pytest.raises(AtelierInputError, match="paper \\(Muse Table 3\\)"):
        tables.side_by_side(already, paper, stand_ins="x", source="Muse Table 3")
    with pytest.raises(AtelierInputError, match="stand_ins"):
        tables.side_by_side(_ours(), paper, stand_ins="  ", source="Muse Table 3")
    with pytest.raises(AtelierInputError, match="'Muse Table 3'.*'Muse Table 2'"):
        tables.side_by_side(_ours(), paper, stand_ins="x", source="Muse Table 2")


def test_side_by_side_edge_cases():
    empty_paper = tables.load_paper_table("movq", "fig6c")  # plot only: no rows
    out = tables.side_by_side(_ours(), empty_paper, stand_ins="x", source="MoVQ Fig. 6(c)")
    assert list(out["source"]) == ["ours"] and math.isnan(out["rFID"].iloc[0])
    paper = tables.load_paper_table("unifashion", "table5")
    out = tables.side_by_side(_ours().iloc[0:0], paper, stand_ins="x", source="UniFashion Table 5")
    assert (out["source"] == "paper (UniFashion Table 5)").all() and len(out) == len(paper)


def test_write_table_writes_csv_and_md_atomically(tmp_path, monkeypatch):
    paper = tables.load_paper_table("m6_fashion", "table2")
    out = tables.side_by_side(_ours(), paper, stand_ins="s", source=paper.attrs["source"])
    written = []
    real = tables.atomic_write_text
    monkeypatch.setattr(tables, "atomic_write_text", lambda p, t: written.append(Path(p)) or real(p, t))
    stem = tmp_path / "results" / "t2i_table2"
    stand_ins = "Fashion-MNIST 28x28 captions stand in for M2C-Fashion 256x256; a small CNN for Inception"
    paths = tables.write_table(out, stem, title="Text-to-image (M6-Fashion Table 2)",
                               stand_ins=stand_ins, source="M6-Fashion Table 2")
    assert paths == {"csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md")}
    assert sorted(written) == sorted(paths.values())  # both went through atomic_write_text
    assert not list(stem.parent.glob(".*.tmp"))
    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == list(out.columns) and len(back) == len(out)
    assert back.loc[back["method"] == "M6-Fashion (Ours)", "speed_s"].item() == 1.02
    md = paths["md"].read_text(encoding="utf-8")
    assert md.startswith("# Text-to-image (M6-Fashion Table 2)\n")
    assert f"\nStand-ins: {stand_ins}\n" in md
    assert "Paper source: M6-Fashion Table 2" in md
    assert "| paper (M6-Fashion Table 2) | Taming Transformer | [6] | 8.7s | 10.28 | 3.82 | 0.38 | 8.7 | — |" in md
    assert "| ours | tiny NAR (ours) | — | — | 81.5 | 2.25 | — | — | 3 |" in md
    assert "FID ↓" in md and "IS ↑" in md
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table_lines) == 2 + len(out)
    assert len({ln.count(" | ") for ln in table_lines[2:]}) == 1  # same cell count on every row


def test_write_table_requires_stand_ins(tmp_path):
    with pytest.raises(AtelierInputError, match="stand_ins"):
        tables.write_table(_ours(), tmp_path / "t", title="t", stand_ins="", source="s")
    assert not list(tmp_path.iterdir())


def test_format_value():
    f = tables.format_value
    assert f(None) == f(float("nan")) == tables.MISSING
    assert f(1024.0) == "1024" and f(7) == "7"
    assert f(0.6641) == "0.6641" and f(198.2) == "198.2" and f(80.123456) == "80.12"
    assert f(123456.7) == "123457" and f("a|b") == "a\\|b"
