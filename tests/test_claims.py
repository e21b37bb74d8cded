"""lib/evaluation/claims.py and reproduce/claims.yaml: the ledger parses, names real configurations, and the
verdict logic gives holds / reversed / inconclusive / under-trained on hand-made rows."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from lib.evaluation import claims as C
import lib.config as lib_params
from lib.io import AtelierInputError
from lib.store import repo_root

LEDGER = repo_root() / "reproduce" / "claims.yaml"


def _ledger():
    return C.parse_ledger(yaml.safe_load(LEDGER.read_text()), str(LEDGER))


def test_the_ledger_has_at_least_15_claims_of_every_paper_on_configurations_params_defines():
    claims = _ledger()
    assert len(claims) >= 15
    assert {c.paper for c in claims} == set(C.PAPERS)
    assert C.missing_configs(claims, lib_params.load("default")) == []
    # and the check can fail: a side naming a configuration params.yaml lacks is reported
    claims[0].claimed.config = "no_such_model"
    assert C.missing_configs(claims, lib_params.load("default")) == [
        f"{claims[0].id}: claimed: kind 'generator' has no config 'no_such_model' in params.yaml generation.models"]


def test_every_paper_reference_resolves_in_paper_numbers():
    pn = yaml.safe_load((repo_root() / "reproduce" / "paper_numbers.yaml").read_text())
    refs = [(c.id, s.paper) for c in _ledger() for s in (c.claimed, c.baseline) if s.paper is not None]
    assert len(refs) >= 10
    for cid, ref in refs:
        assert isinstance(C.paper_value(pn, ref, cid), float), cid


@pytest.mark.parametrize("direction, interval, under, want", [
    ("higher", (0.5, 2.0), False, "holds"),
    ("higher", (-2.0, -0.5), False, "reversed"),
    ("higher", (-0.5, 2.0), False, "inconclusive"),
    ("lower", (-3.0, -1.0), False, "holds"),       # claimed - baseline < 0: lower, as claimed
    ("lower", (1.0, 3.0), False, "reversed"),
    ("lower", (-1.0, 3.0), False, "inconclusive"),
    ("higher", None, False, "inconclusive"),      # one seed: no interval, no verdict
    ("higher", (0.5, 2.0), True, "under-trained"),  # a side still improving overrides everything
])
def test_verdicts_on_hand_made_rows(direction, interval, under, want):
    assert C.verdict(direction, interval, under)[0] == want


def test_similar_claims_need_the_whole_interval_inside_the_margin():
    # margin 10% of a baseline of 50: +-5
    assert C.verdict("similar", (-2.0, 3.0), False, 0.1, 50.0)[0] == "holds"
    assert C.verdict("similar", (6.0, 9.0), False, 0.1, 50.0)[0] == "reversed"
    assert C.verdict("similar", (-2.0, 7.0), False, 0.1, 50.0)[0] == "inconclusive"


def test_welch_interval_matches_the_textbook_formula():
    a, b = [10.0, 12.0, 11.0], [8.0, 9.5, 9.0, 8.5]
    lo, hi = C.welch_interval(a, b)
    from scipy import stats

    t = stats.ttest_ind(a, b, equal_var=False)
    ci = t.confidence_interval(0.95)
    assert math.isclose(lo, ci.low, rel_tol=1e-9) and math.isclose(hi, ci.high, rel_tol=1e-9)
    assert C.welch_interval([1.0], b) is None


def test_still_improving_reads_the_end_of_the_curve():
    falling = [1.0 / (1 + 0.05 * i) for i in range(200)]   # still ~10% lower over the last quarter
    flat = [1.0 + 0.01 * math.sin(i) for i in range(200)]
    assert C.still_improving(falling)["improving"] is True
    assert C.still_improving(flat)["improving"] is False
    assert C.still_improving([1.0] * 5)["improving"] is None


def _write(root, rel, doc):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_evaluate_reads_every_seed_selects_rows_and_computes_the_verdict(tmp_path):
    for seed, (a, b) in enumerate([(10.0, 14.0), (11.0, 15.0), (10.5, 13.5)]):
        _write(tmp_path, f"r/seed{seed}/metrics.json",
               {"metrics": {"rows": [{"model": "x", "FID": a}, {"model": "y", "FID": b}]}})
    _write(tmp_path, "r/loss_x.json", [{"step": i, "loss": 1.0} for i in range(100)])
    row = {"id": "t", "paper": "Muse", "where": "T1", "quote": "q", "metric": "FID", "direction": "lower",
           "depends_on": "training",
           "claimed": {"kind": "generator", "config": "x", "label": "X", "file": "r/{seed}/metrics.json",
                       "path": ["rows", {"model": "x"}, "FID"], "curve": {"file": "r/loss_x.json", "key": "loss"}},
           "baseline": {"kind": "generator", "config": "y", "label": "Y", "file": "r/{seed}/metrics.json",
                        "path": ["rows", {"model": "y"}, "FID"]}}
    (claim,) = C.parse_ledger({"claims": [row]})
    out = C.evaluate(claim, tmp_path)
    assert out["seeds"] == {"claimed": 3, "baseline": 3} and out["claimed"]["seeds"] == ["seed0", "seed1", "seed2"]
    assert math.isclose(out["difference"], 10.5 - 14.166666666666666)
    assert out["verdict"] == "holds" and out["interval"][1] < 0 and out["point_estimate_agrees"] is True
    assert out["curves"]["claimed"]["improving"] is False
    # a missing result is reported, not invented
    # a row absent from the file (its configuration not trained in this profile) is no value, reported
    claim.baseline.path = ["rows", {"model": "untrained"}, "FID"]
    absent_row = C.evaluate(claim, tmp_path)
    assert absent_row["verdict"] == "inconclusive" and "matches no row" in absent_row["why"]
    claim.baseline.file = "r/absent.json"
    missing = C.evaluate(claim, tmp_path)
    assert missing["verdict"] == "inconclusive" and "no result at r/absent.json" in missing["why"]


def _one_seed_claim(tmp_path, depends_on, claimed_reps, baseline_reps, a=10.0, b=12.0):
    """Two rows of one results file, one seed, with stored bootstrap replicates (None: none stored)."""
    rows = [{"model": "x", "FID": a}, {"model": "y", "FID": b}]
    for r, reps in zip(rows, (claimed_reps, baseline_reps)):
        if reps is not None:
            r["bootstrap"] = {"FID": list(reps)}
    _write(tmp_path, "r/metrics.json", {"metrics": {"rows": rows}})
    row = {"id": "e", "paper": "Muse", "where": "T1", "quote": "q", "metric": "FID", "direction": "lower",
           "depends_on": depends_on,
           "claimed": {"kind": "generator", "config": "x", "label": "X", "file": "r/metrics.json",
                       "path": ["rows", {"model": "x"}, "FID"]},
           "baseline": {"kind": "generator", "config": "y", "label": "Y", "file": "r/metrics.json",
                        "path": ["rows", {"model": "y"}, "FID"]}}
    (claim,) = C.parse_ledger({"claims": [row]})
    return C.evaluate(claim, tmp_path)


def test_evaluation_claims_take_their_interval_from_the_stored_bootstrap_replicates(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.3, 200)
    # replicate-wise differences around -2 (claimed lower, as claimed): the interval excludes zero
    out = _one_seed_claim(tmp_path, "evaluation", 10 + noise, 12 + noise[::-1])
    assert out["verdict"] == "holds" and out["interval"][1] < 0 and out["resamples"] == 200
    lo, hi = np.quantile((10 + noise) - (12 + noise[::-1]), [0.025, 0.975])
    assert math.isclose(out["interval"][0], lo) and math.isclose(out["interval"][1], hi)
    assert "bootstrap" in out["interval_method"]
    assert "replicates" not in out["claimed"]  # the JSON keeps the interval, not 2 x 200 numbers again
    # the other way round: reversed; overlapping replicates: inconclusive
    assert _one_seed_claim(tmp_path, "evaluation", 12 + noise, 10 + noise, 12.0, 10.0)["verdict"] == "reversed"
    wide = rng.normal(0, 3.0, 200)
    assert _one_seed_claim(tmp_path, "evaluation", 10 + wide, 10.5 + wide[::-1], 10.0, 10.5)["verdict"] == "inconclusive"
    # a side without replicates: no interval, and the reason says which is missing
    none = _one_seed_claim(tmp_path, "evaluation", 10 + noise, None)
    assert none["verdict"] == "inconclusive" and none["why"] == "no interval: a side has no bootstrap replicates"


def test_a_wildcard_selector_reads_every_seed_row_and_gives_a_welch_interval(tmp_path):
    rows = [{"model": m, "seed": s, "FID": v} for m, vals in (("pq", (100.0, 101.0, 99.5)), ("rq", (110.0, 112.0, 111.0)))
            for s, v in enumerate(vals)]
    _write(tmp_path, "r/metrics.json", {"metrics": {"seeds": rows + [{"model": "pq", "FID": 1.0}]}})  # no seed: not one
    row = {"id": "w", "paper": "M6-Fashion", "where": "T4", "quote": "q", "metric": "FID", "direction": "lower",
           "depends_on": "training",
           "claimed": {"kind": "generator", "config": "pq", "label": "PQ", "file": "r/metrics.json",
                       "path": ["seeds", {"model": "pq", "seed": "*"}, "FID"]},
           "baseline": {"kind": "generator", "config": "rq", "label": "RQ", "file": "r/metrics.json",
                        "path": ["seeds", {"model": "rq", "seed": "*"}, "FID"]}}
    (claim,) = C.parse_ledger({"claims": [row]})
    out = C.evaluate(claim, tmp_path)
    assert out["claimed"]["values"] == [100.0, 101.0, 99.5] and out["claimed"]["seeds"] == ["seed0", "seed1", "seed2"]
    assert out["seeds"] == {"claimed": 3, "baseline": 3}
    assert out["interval"] == list(C.welch_interval([100.0, 101.0, 99.5], [110.0, 112.0, 111.0]))
    assert out["verdict"] == "holds" and out["interval_method"].startswith("Welch")
    claim.claimed.path = ["seeds", {"model": "vq", "seed": "*"}, "FID"]
    assert "matches no row" in C.evaluate(claim, tmp_path)["why"]
    with pytest.raises(AtelierInputError, match="at most one field may be"):
        C.select_each({"seeds": rows}, ["seeds", {"model": "*", "seed": "*"}, "FID"], "f.json")


def test_training_claims_never_take_a_verdict_from_evaluation_noise(tmp_path):
    import numpy as np

    noise = np.random.default_rng(1).normal(0, 0.3, 200)
    out = _one_seed_claim(tmp_path, "training", 10 + noise, 12 + noise[::-1])
    # the bootstrap alone would say "holds"; with one seed per side a training comparison has no interval
    assert out["verdict"] == "inconclusive" and out["interval"] is None
    assert "fewer than two seeds" in out["why"]
    assert out["sampling_interval"][1] < 0  # reported as information


def test_ledger_errors_name_the_claim_and_the_field():
    base = {"id": "a", "paper": "Muse", "where": "w", "quote": "q", "metric": "m", "direction": "lower",
            "depends_on": "evaluation", "claimed": {"kind": "generator", "config": "x", "label": "l", "file": "f", "path": ["k"]},
            "baseline": {"kind": "generator", "config": "y", "label": "l", "file": "f", "path": ["k"]}}
    with pytest.raises(AtelierInputError, match=r"claim 'a'.direction: must be one of"):
        C.parse_ledger({"claims": [{**base, "direction": "better"}]}, "c.yaml")
    with pytest.raises(AtelierInputError, match=r"claim 'a'.margin: required exactly when direction is 'similar'"):
        C.parse_ledger({"claims": [{**base, "direction": "similar"}]}, "c.yaml")
    with pytest.raises(AtelierInputError, match=r"claim 'a' baseline: unknown \['pth'\]"):
        C.parse_ledger({"claims": [{**base, "baseline": {**base["baseline"], "pth": 1}}]}, "c.yaml")
    with pytest.raises(AtelierInputError, match=r"claim 'a'.depends_on: must be one of \('training', 'evaluation'\)"):
        C.parse_ledger({"claims": [{**base, "depends_on": "seeds"}]}, "c.yaml")
    with pytest.raises(AtelierInputError, match=r"claim 'a': missing \['depends_on'\]"):
        C.parse_ledger({"claims": [{k: v for k, v in base.items() if k != "depends_on"}]}, "c.yaml")
    with pytest.raises(AtelierInputError, match="claim id 'a' appears twice"):
        C.parse_ledger({"claims": [base, base]}, "c.yaml")
    with pytest.raises(C.MissingResult, match=r"selector \{'model': 'z'\} matches no row"):
        C.select({"rows": [{"model": "x"}]}, ["rows", {"model": "z"}], "f.json")
    with pytest.raises(AtelierInputError, match=r"matches 2 rows, not 1"):
        C.select({"rows": [{"model": "x"}, {"model": "x"}]}, ["rows", {"model": "x"}], "f.json")


def _readme_speed():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_speed", repo_root() / "reproduce" / "readme_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_claims_block_counts_the_verdicts_of_the_json():
    RS = _readme_speed()
    rows = [{"paper": "MoVQ", "verdict": "holds", "interval": [1, 2], "depends_on": "training"},
            {"paper": "MoVQ", "verdict": "under-trained"},
            {"paper": "Muse", "verdict": "inconclusive", "interval": None, "depends_on": "evaluation"}]
    doc = {"metrics": {"claims": rows, "summary": C.summarize(rows), "num_claims": 3},
           "provenance": {"profile": "default", "git_revision": "0123456789ab"}}
    block = RS.render_claims(doc, "ef" * 32)
    assert "of 3 relative claims" in block and "**1 hold, 0 are reversed, 1 are inconclusive and 1 are under-trained**" in block
    assert "MoVQ: 1 holds, 1 under-trained; Muse: 1 inconclusive" in block and "sha256 `efefefefefefefef`" in block
    assert ("0 have a bootstrap interval over evaluation samples (same weights compared two ways), 1 an interval "
            "over training seeds, and 1 no interval") in block


def test_readme_claims_block_matches_the_committed_json():
    RS = _readme_speed()
    path = repo_root() / RS.CLAIMS_JSON_PATH
    if not path.is_file():
        pytest.skip(f"{path}: the claims stage has not run")
    doc, sha = RS.load(path)
    block = RS.current_block((repo_root() / "README.md").read_text(), RS.CLAIMS_BEGIN, RS.CLAIMS_END)
    if f"sha256 `{sha[:16]}`" not in block:
        pytest.skip("claims.json changed since the README was rendered: run reproduce/readme_speed.py")
    assert block == RS.render_claims(doc, sha)


def test_the_claims_stage_depends_on_every_file_the_ledger_reads():
    doc = yaml.safe_load((repo_root() / "dvc.yaml").read_text())["stages"]
    deps = doc["claims"]["deps"]
    missing = [f for f in C.ledger_files(_ledger()) if f not in deps]
    assert missing == [], f"dvc.yaml stage claims lacks deps {missing}"
    assert "results/09_claims" in doc["report"]["deps"]
