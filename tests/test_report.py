"""The report stage: compressed, git-tracked figure copies and links a clone can follow (issue 20)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.evaluation import report
from lib.io import AtelierInputError
from lib.store import out_root, repo_root

IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]+src=\"([^\"]+)\"")


def _noisy_png(path: Path, side: int = 900) -> Path:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
    arr[..., 3] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGBA").save(path)
    return path


def test_compress_png_fits_the_budget_deterministically(tmp_path):
    src = _noisy_png(tmp_path / "big.png")
    assert src.stat().st_size > report.MAX_FIGURE_BYTES  # the budget has to bite
    a, b = report.compress_png(src), report.compress_png(src)
    assert a == b and len(a) <= report.MAX_FIGURE_BYTES
    (tmp_path / "out.png").write_bytes(a)
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "P" and im.width < 900  # palette, and shrunk to fit


def test_compress_png_keeps_a_flat_figure_at_full_size(tmp_path):
    arr = np.full((200, 300, 3), 255, np.uint8)
    arr[50:150, 100:200] = (200, 30, 30)
    Image.fromarray(arr).save(tmp_path / "flat.png")
    (tmp_path / "out.png").write_bytes(report.compress_png(tmp_path / "flat.png"))
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (300, 200)
        assert np.array_equal(np.asarray(im.convert("RGB")), arr)  # two colours survive a palette exactly


def test_compress_png_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(AtelierInputError, match="broken.png"):
        report.compress_png(bad)


def test_report_links_the_copies_it_writes_and_drops_stale_ones():
    root = out_root()  # conftest points it at a temporary folder
    (root / "results" / "05_editing").mkdir(parents=True)
    (root / "results" / "05_editing" / "metrics.json").write_text(json.dumps({"metrics": {"x": 1.0}}))
    _noisy_png(root / "artifacts" / "figures" / "05_editing" / "local_edit.png", side=64)
    stale = root / "results" / "report" / "figures" / "05_editing" / "gone.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    md = report.write_report().read_text()
    links = [m.group(1) for m in IMAGE_LINK.finditer(md)]
    assert links == ["figures/05_editing/local_edit.png"]
    assert (root / "results" / "report" / links[0]).is_file() and not stale.exists()
    assert "artifacts" not in md


def _tracked(path: Path) -> bool:
    proc = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=repo_root(),
                          capture_output=True, text=True)
    return proc.returncode == 0


@pytest.mark.parametrize("doc", ["README.md", "results/report/report.md"])
def test_every_image_link_resolves_to_a_tracked_file_within_budget(doc):
    """What a clone shows: every picture README.md and the committed report link is a file in git."""
    if not _tracked(repo_root() / "README.md"):
        pytest.skip("not a git checkout")
    md_path = repo_root() / doc
    links = [a or b for a, b in IMAGE_LINK.findall(md_path.read_text())]
    assert links, f"{doc}: no image links"
    broken = [ln for ln in links if not _tracked((md_path.parent / ln).resolve())]
    assert not broken, f"{doc}: image links to files a clone does not have: {broken[:5]}"
    sizes = {ln: (md_path.parent / ln).stat().st_size for ln in links}
    assert max(sizes.values()) <= report.MAX_FIGURE_BYTES, max(sizes.items(), key=lambda kv: kv[1])


def test_tracked_report_figures_fit_the_total_budget():
    figures = subprocess.run(["git", "ls-files", "results/report/figures"], cwd=repo_root(), capture_output=True,
                             text=True).stdout.split()
    if not figures:
        pytest.skip("no report figures committed in this checkout")
    assert sum((repo_root() / f).stat().st_size for f in figures) <= report.MAX_TOTAL_BYTES


DOC_CITATION = re.compile(r"\b((?:docs|notes)/[A-Za-z0-9_./-]+\.md)\b")


def test_every_document_the_code_cites_is_in_the_repository():
    """Issue 16: four docstrings cited ``notes/generation_contract.md``, which did not exist."""
    cited = {}
    for path in sorted((repo_root() / "lib").rglob("*.py")) + sorted((repo_root() / "reproduce").glob("*.py")):
        for doc in DOC_CITATION.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(doc, []).append(str(path.relative_to(repo_root())))
    assert "docs/generation_contract.md" in cited
    missing = {doc: files for doc, files in cited.items() if not (repo_root() / doc).is_file()}
    assert not missing, f"cited but absent: {missing}"
