"""lib.evaluation.headlines: the flat per-row numbers `dvc metrics show` lists (issue 20)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from lib.evaluation import headlines as H
from lib.io import AtelierInputError
from lib.store import repo_root

SPEC = repo_root() / "reproduce" / "headlines.yaml"


def _put(root: Path, rel: str, doc) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _spec(tmp_path, entries, columns=("fid", "acc", "psnr", "count")):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"columns": list(columns), "entries": entries}))
    return path


def test_rows_globs_and_split_fields_become_flat_files(tmp_path):
    root = tmp_path / "repo"
    _put(root, "results/t2i/metrics.json", {"metrics": {"rows": [
        {"model": "muse", "sampler": "maskgit", "FID": 90.5, "acc_joint": 0.3, "note": "x"},
        {"model": "ar", "sampler": "autoregressive", "FID": float("nan"), "acc_joint": 0.2}]}})
    _put(root, "results/tok/vq/metrics.json", {"metrics": {"psnr": 20.0, "codebook": {"usage": 0.9}}})
    _put(root, "results/tok/rq/metrics.json", {"metrics": {"skipped": True, "psnr": 1.0}})
    _put(root, "results/claims.json", {"summary": {"holds": 2, "under-trained": 5}})
    spec = _spec(tmp_path, [
        {"name": "t2i/{label}", "source": "results/t2i/metrics.json", "rows": "rows", "label": ["model", "sampler"],
         "fields": {"FID": "fid", "acc_joint": "acc"}},
        {"name": "tok/{dir}", "source": "results/tok/*/metrics.json", "fields": {"psnr": "psnr"}},
        {"name": "claims/{field}", "source": "results/claims.json",
         "fields": {"summary.holds": "count", "summary.under-trained": "count"}},
        {"name": "absent", "source": "results/not_run/metrics.json", "fields": {"x": "fid"}},
    ])
    out = tmp_path / "out"
    table = H.write(spec, out, root)
    assert table == {"t2i/muse_maskgit": {"fid": 90.5, "acc": 0.3}, "t2i/ar_autoregressive": {"acc": 0.2},
                     "tok/vq": {"psnr": 20.0}, "claims/holds": {"count": 2}, "claims/under_trained": {"count": 5}}
    assert json.loads((out / "t2i" / "muse_maskgit.json").read_text()) == {"acc": 0.3, "fid": 90.5}
    assert not (out / "tok" / "rq.json").exists()  # a skipped stage has no headline


def test_stale_headlines_are_removed(tmp_path):
    root = tmp_path / "repo"
    _put(root, "results/a/metrics.json", {"metrics": {"FID": 1.0}})
    spec = _spec(tmp_path, [{"name": "a", "source": "results/a/metrics.json", "fields": {"FID": "fid"}}])
    out = tmp_path / "out"
    _put(out, "old/gone.json", {"fid": 3})
    H.write(spec, out, root)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == ["a.json"]


@pytest.mark.parametrize("entries, message", [
    ([{"name": "a", "source": "x.json", "fields": {"FID": "FID"}}], "not in 'columns'"),
    ([{"name": "a", "source": "x.json", "rows": "rows", "fields": {"FID": "fid"}}], "needs a 'label'"),
    ([{"name": "a", "fields": {"FID": "fid"}}], "needs name, source and fields"),
])
def test_bad_spec_is_refused_naming_the_entry(tmp_path, entries, message):
    with pytest.raises(AtelierInputError, match=rf"entries\[0\].*{message}"):
        H.load_spec(_spec(tmp_path, entries))


def test_two_rows_with_one_label_are_refused_by_name(tmp_path):
    root = tmp_path / "repo"
    _put(root, "results/a/metrics.json", {"metrics": {"rows": [{"m": "x", "FID": 1.0}, {"m": "x", "FID": 2.0}]}})
    spec = _spec(tmp_path, [{"name": "a/{label}", "source": "results/a/metrics.json", "rows": "rows", "label": ["m"],
                             "fields": {"FID": "fid"}}])
    with pytest.raises(AtelierInputError, match="'a/x'.*filled twice"):
        H.write(spec, tmp_path / "out", root)


def test_repository_spec_sources_are_deps_of_the_headlines_stage():
    spec = H.load_spec(SPEC)
    stage = yaml.safe_load((repo_root() / "dvc.yaml").read_text())["stages"]["headlines"]
    deps = stage["deps"]
    for e in spec["entries"]:
        src = e["source"].split("*")[0].rstrip("/")
        assert any(src == d or src.startswith(d.rstrip("/") + "/") for d in deps), f"{e['source']}: not a dep"


def test_committed_results_give_every_entry_rows_and_a_table_that_fits_a_terminal():
    """On the committed default results: every spec entry finds its numbers (a renamed key in a
    stage's metrics.json fails here), and `dvc metrics show` lists only them, under 200 lines of
    at most 200 characters."""
    root = repo_root()
    spec = H.load_spec(SPEC)
    table = H.headlines(spec, root)
    if not table:
        pytest.skip("no committed results in this checkout")
    for e in spec["entries"]:
        sources = list(H._sources(e["source"], root))
        if any(p.is_file() and not json.loads(p.read_text()).get("metrics", {}).get("skipped") for _, p in sources):
            prefix = e["name"].split("{")[0]
            assert any(n.startswith(prefix) for n in table), f"{e['name']}: no numbers found in {e['source']}"
    # measured, not estimated: what DVC itself prints for the checkout's headline files
    import shutil
    import subprocess
    import sys

    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None or not (root / ".dvc").is_dir():
        pytest.skip("needs dvc and a DVC checkout")
    proc = subprocess.run([dvc, "metrics", "show"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(table) + 1, "dvc metrics show lists a file that is not a headline"
    assert len(lines) < 200 and max(map(len, lines)) <= 200, f"{len(lines)} lines, widest {max(map(len, lines))}"
    assert all(math.isfinite(v) for cell in table.values() for v in cell.values())


def test_stage_command_writes_under_atelier_out_not_the_checkout(tmp_path):
    """reproduce/test runs the stage command with ATELIER_OUT set: the headlines must land there,
    not in the checkout's tracked results/headlines (a CI run once rewrote them)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    _put(out, "results/05_editing/metrics.json",
         {"metrics": {"tasks": [{"task": "in-painting (own caption)", "preserved_psnr": 30.0, "attribute_accuracy": 0.5,
                                 "FID": 80.0}]}})
    cmd = yaml.safe_load((repo_root() / "dvc.yaml").read_text())["stages"]["headlines"]["cmd"]
    before = sorted(p.read_bytes() for p in (repo_root() / "results" / "headlines").rglob("*.json"))
    proc = subprocess.run(cmd, shell=True, cwd=repo_root(), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ATELIER_OUT": str(out), "PATH": os.path.dirname(sys.executable)
                               + os.pathsep + os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "results" / "headlines" / "05_editing" / "in_painting_own_caption.json").read_text()) == \
        {"psnr": 30.0, "acc": 0.5, "fid": 80.0}
    assert sorted(p.read_bytes() for p in (repo_root() / "results" / "headlines").rglob("*.json")) == before
