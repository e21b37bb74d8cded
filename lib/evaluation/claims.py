"""The claims ledger: does each paper's relative claim hold at our scale? (issue 17)

``reproduce/claims.yaml`` is data: one row per claim, in the paper's words, naming the two sides
compared (``claimed`` is what the paper says is better, ``baseline`` what it beats), the metric, the
direction (``higher`` / ``lower`` is better, or ``similar`` within a ``margin``), where each side's value
lives in our results and, optionally, in ``reproduce/paper_numbers.yaml``. This module reads the
values and computes the verdict; nothing here is a number typed by hand.

Verdicts (computed, never written):

- ``under-trained`` -- a side's training curve still falls steeply at its end (:func:`still_improving`):
  a comparison of models that have not converged is not the paper's comparison;
- ``holds``    -- the difference lies in the paper's direction and its interval excludes zero;
- ``reversed`` -- the opposite direction, interval excluding zero;
- ``inconclusive`` -- the interval includes zero, or there is no interval (one seed per side).

Which interval depends on what the comparison varies (the row's ``depends_on``):

- ``training``: the two sides are separately trained models, so the spread that matters is between
  training seeds: Welch's t interval of the difference of means over the seeds of each side (at
  least two per side). With one seed there is none and the ledger says so instead of guessing; the
  evaluation-only bootstrap interval is still reported (``sampling_interval``) to show how much of
  the gap the evaluation's own noise could explain, but it never decides the verdict.
- ``evaluation``: both sides use the same trained weights (two samplers, guidance on/off, two
  query types) or measure something training does not change (decoding time), so the spread that
  matters is the evaluation's: the percentile interval of the difference of bootstrap replicates
  over the evaluation samples (:mod:`lib.evaluation.uncertainty`; the stages store the replicates beside each
  value as ``row["bootstrap"][metric]``).

For ``similar`` the claim holds when the whole interval lies inside +-margin (relative to the
baseline), is reversed when it lies wholly outside, and is inconclusive otherwise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from scipy import stats

import lib.config as lib_params
from lib.evaluation import uncertainty
from lib.io import AtelierInputError, read_json
from lib.provenance import run_info, write_metrics
from lib.store import out_root, repo_root, results_dir

VERDICTS = ("holds", "reversed", "inconclusive", "under-trained")
DIRECTIONS = ("higher", "lower", "similar")
DEPENDS_ON = ("training", "evaluation")
PAPERS = ("M6-Fashion", "MoVQ", "Muse", "UniFashion")
#: which params.yaml section a side's ``kind`` names its ``config`` in
KIND_SECTIONS = {"tokenizer": ("tokenizers", "configs"), "finetune": ("tokenizers", "finetunes"),
                 "generator": ("generation", "models"),
                 "super_res": ("super_res",), "unifashion": ("unifashion", "steps")}
ROW_KEYS = {"id", "paper", "where", "quote", "metric", "direction", "depends_on", "claimed", "baseline"}
SIDE_KEYS = {"kind", "config", "label", "file", "path"}
#: still improving: the smoothed curve fell by more than this fraction over the last quarter
PLATEAU_DROP = 0.03


class MissingResult(AtelierInputError):
    """A key or row a claim names is absent from a results file (e.g. its configuration is not
    trained in this profile): the side has no value, which is reported, not an error."""


@dataclass
class Side:
    label: str
    kind: str
    config: str
    file: str
    path: list
    curve: str | None = None
    curve_key: str | None = None
    paper: Any = None


@dataclass
class Claim:
    id: str
    paper: str
    where: str
    quote: str
    metric: str
    direction: str
    claimed: Side
    baseline: Side
    margin: float | None = None
    depends_on: str = "training"


def _side(source: str, cid: str, which: str, raw: Any) -> Side:
    where = f"{source}: claim {cid!r} {which}"
    if not isinstance(raw, Mapping):
        raise AtelierInputError(f"{where}: must be a mapping with {sorted(SIDE_KEYS)}")
    missing, unknown = SIDE_KEYS - set(raw), set(raw) - SIDE_KEYS - {"curve", "paper"}
    if missing or unknown:
        raise AtelierInputError(f"{where}: " + "; ".join(
            ([f"missing {sorted(missing)}"] if missing else []) + ([f"unknown {sorted(unknown)}"] if unknown else [])))
    if raw["kind"] not in KIND_SECTIONS:
        raise AtelierInputError(f"{where}.kind: must be one of {sorted(KIND_SECTIONS)}, got {raw['kind']!r}")
    if not isinstance(raw["path"], list) or not raw["path"]:
        raise AtelierInputError(f"{where}.path: must be a non-empty list of keys / row selectors")
    curve = raw.get("curve")
    if curve is not None and (not isinstance(curve, Mapping) or set(curve) != {"file", "key"}):
        raise AtelierInputError(f"{where}.curve: must be {{file, key}} (a loss curve JSON and its column)")
    return Side(label=str(raw["label"]), kind=raw["kind"], config=str(raw["config"]), file=str(raw["file"]),
                path=list(raw["path"]), curve=curve and str(curve["file"]), curve_key=curve and str(curve["key"]),
                paper=raw.get("paper"))


def parse_ledger(doc: Any, source: str = "claims.yaml") -> list[Claim]:
    """The ledger's rows, checked: errors name the file, the claim and the field."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("claims"), list):
        raise AtelierInputError(f"{source}: expected a mapping with a list under 'claims'")
    claims, seen = [], set()
    for i, row in enumerate(doc["claims"]):
        cid = row.get("id", f"#{i}") if isinstance(row, Mapping) else f"#{i}"
        if not isinstance(row, Mapping):
            raise AtelierInputError(f"{source}: claim {cid}: must be a mapping")
        missing = ROW_KEYS - set(row)
        if missing:
            raise AtelierInputError(f"{source}: claim {cid!r}: missing {sorted(missing)}")
        if cid in seen:
            raise AtelierInputError(f"{source}: claim id {cid!r} appears twice")
        seen.add(cid)
        if row["paper"] not in PAPERS:
            raise AtelierInputError(f"{source}: claim {cid!r}.paper: must be one of {PAPERS}, got {row['paper']!r}")
        if row["direction"] not in DIRECTIONS:
            raise AtelierInputError(f"{source}: claim {cid!r}.direction: must be one of {DIRECTIONS}, "
                                    f"got {row['direction']!r}")
        if row["depends_on"] not in DEPENDS_ON:
            raise AtelierInputError(f"{source}: claim {cid!r}.depends_on: must be one of {DEPENDS_ON}, "
                                    f"got {row['depends_on']!r}")
        margin = row.get("margin")
        if (row["direction"] == "similar") != (margin is not None):
            raise AtelierInputError(f"{source}: claim {cid!r}.margin: required exactly when direction is 'similar'")
        if margin is not None and not (isinstance(margin, (int, float)) and 0 < margin < 1):
            raise AtelierInputError(f"{source}: claim {cid!r}.margin: a fraction in (0, 1), got {margin!r}")
        claims.append(Claim(id=cid, paper=row["paper"], where=str(row["where"]), quote=str(row["quote"]),
                            metric=str(row["metric"]), direction=row["direction"],
                            claimed=_side(source, cid, "claimed", row["claimed"]),
                            baseline=_side(source, cid, "baseline", row["baseline"]),
                            margin=float(margin) if margin is not None else None,
                            depends_on=row["depends_on"]))
    return claims


def missing_configs(claims: Sequence[Claim], params: Mapping[str, Any]) -> list[str]:
    """``claim id: side: kind 'x' has no config 'y' in params.yaml <section>`` for every side whose
    configuration params.yaml does not define (an empty list when all exist)."""
    out = []
    for c in claims:
        for which, side in (("claimed", c.claimed), ("baseline", c.baseline)):
            node: Any = params
            for key in KIND_SECTIONS[side.kind]:
                node = node.get(key, {}) if isinstance(node, Mapping) else {}
            known = node if isinstance(node, Mapping) else {}
            if side.kind == "super_res":
                ok = bool(known)  # one super-res stage: config names its base model
                ok = ok and side.config in params.get("generation", {}).get("models", {})
            else:
                ok = side.config in known
            if not ok:
                out.append(f"{c.id}: {which}: kind {side.kind!r} has no config {side.config!r} in params.yaml "
                           f"{'.'.join(KIND_SECTIONS[side.kind])}")
    return out


def select(doc: Any, path: Sequence[Any], where: str = "") -> Any:
    """Follow ``path`` into ``doc``: a string/int is a key/index; a mapping selects the one list
    element whose fields equal it (``{model: m6, sampler: smart}``)."""
    node = doc
    for step in path:
        if isinstance(step, Mapping):
            if not isinstance(node, list):
                raise AtelierInputError(f"{where}: selector {dict(step)} needs a list, found {type(node).__name__}")
            hits = [r for r in node if isinstance(r, Mapping) and all(r.get(k) == v for k, v in step.items())]
            if not hits:
                raise MissingResult(f"{where}: selector {dict(step)} matches no row")
            if len(hits) > 1:
                raise AtelierInputError(f"{where}: selector {dict(step)} matches {len(hits)} rows, not 1")
            node = hits[0]
        elif isinstance(node, Mapping) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and -len(node) <= step < len(node):
            node = node[step]
        else:
            have = sorted(node)[:12] if isinstance(node, Mapping) else type(node).__name__
            raise MissingResult(f"{where}: no {step!r} (has {have})")
    return node


def select_each(doc: Any, path: Sequence[Any], where: str = "") -> list[tuple[Any, Any, Any]]:
    """Like :func:`select`, but a selector may hold one field set to ``"*"`` (``{model: m6_pq, seed: "*"}``):
    it then matches every row with the other fields, and each row is one seed. Returns
    ``[(seed label, value, the mapping holding the value)]``: the label is the row's ``*`` field
    (``None`` without a wildcard, one element)."""
    for i, step in enumerate(path):
        if isinstance(step, Mapping) and "*" in step.values():
            wild = [k for k, v in step.items() if v == "*"]
            if len(wild) != 1:
                raise AtelierInputError(f"{where}: selector {dict(step)}: at most one field may be '*'")
            node = select(doc, path[:i], where) if i else doc
            if not isinstance(node, list):
                raise AtelierInputError(f"{where}: selector {dict(step)} needs a list, found {type(node).__name__}")
            fixed = {k: v for k, v in step.items() if v != "*"}
            hits = [r for r in node if isinstance(r, Mapping) and wild[0] in r
                    and all(r.get(k) == v for k, v in fixed.items())]
            if not hits:
                raise MissingResult(f"{where}: selector {dict(step)} matches no row")
            rest = list(path[i + 1:])
            return [(r[wild[0]], select(r, rest, where), select(r, rest[:-1], where) if rest else r) for r in hits]
    holder = select(doc, path[:-1], where) if len(path) > 1 else doc
    return [(None, select(doc, path, where), holder)]


def side_values(side: Side, root: Path) -> dict[str, Any]:
    """The side's value per seed: ``path`` is followed from the metrics JSON's ``metrics`` object;
    ``file`` may hold ``{seed}``, then every ``seed<k>`` file found counts; a ``"*"`` field of a row
    selector (:func:`select_each`) makes every matching row one seed; else the one value is one seed. Missing or skipped results give ``values: []`` and a reason. ``replicates``: the bootstrap
    replicates stored beside the value (``bootstrap[<last path key>]`` of the same row) when there is
    exactly one seed, else None."""
    files: list[tuple[Any, Path]] = []
    if "{seed}" in side.file:
        pattern = side.file.replace("{seed}", "*")
        files = [(p.parent.name, p) for p in sorted(root.glob(pattern))]
    elif (root / side.file).is_file():
        files = [("main", root / side.file)]
    values, seeds, missing, reps = [], [], [], []
    for seed, path in files:
        doc = read_json(path)
        if isinstance(doc, Mapping) and doc.get("metrics", {}).get("skipped"):
            continue
        metrics = doc.get("metrics", doc) if isinstance(doc, Mapping) else doc
        try:
            found = select_each(metrics, side.path, f"{side.file}")
        except MissingResult as err:
            missing.append(str(err))
            continue
        for label, v, holder in found:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            values.append(float(v))
            seeds.append(seed if label is None else f"seed{label}")
            boot = holder.get("bootstrap") if isinstance(holder, Mapping) else None
            reps.append(boot.get(side.path[-1]) if isinstance(boot, Mapping) else None)
    reason = None if values else (missing[0] if missing else
                                  f"no result at {side.file} (stage not run or skipped in this profile)")
    replicates = [float(r) for r in reps[0]] if len(reps) == 1 and isinstance(reps[0], list) and reps[0] else None
    return {"values": values, "seeds": seeds, "reason": reason, "replicates": replicates}


def still_improving(curve: Sequence[float], drop: float = PLATEAU_DROP) -> dict[str, Any]:
    """Whether a training curve (a loss, lower is better) is still falling steeply at its end: the
    mean of its last 10% against the mean of the 10% window a quarter of the run earlier; improving
    when it fell by more than ``drop`` of that earlier value. Noisy per-step losses are averaged by
    the windows."""
    n = len(curve)
    if n < 20:
        return {"improving": None, "reason": f"{n} points: too short to judge"}
    w = max(2, n // 10)
    last = statistics.fmean(curve[-w:])
    earlier = statistics.fmean(curve[n - n // 4 - w:n - n // 4])
    rel = (earlier - last) / abs(earlier) if earlier else 0.0
    return {"improving": rel > drop, "relative_drop_last_quarter": rel, "threshold": drop, "points": n}


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Interval of mean(a) - mean(b), Welch's t with Welch-Satterthwaite degrees of freedom; None
    with fewer than two values per side."""
    if len(a) < 2 or len(b) < 2:
        return None

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return (diff, diff)
    dof = (va + vb) ** 2 / ((va ** 2) / (len(a) - 1) + (vb ** 2) / (len(b) - 1))
    t = stats.t.ppf(0.5 + level / 2, dof)
    return (diff - t * se, diff + t * se)


def verdict(direction: str, interval: tuple[float, float] | None, under_trained: bool,
            margin: float | None = None, baseline: float | None = None,
            no_interval: str = "no interval: fewer than two seeds per side") -> tuple[str, str]:
    """``(verdict, why)`` for a difference claimed - baseline with ``interval`` (``no_interval``: the
    reason given when there is none)."""
    if under_trained:
        return "under-trained", "a side's training curve is still falling steeply at its end"
    if interval is None:
        return "inconclusive", no_interval
    lo, hi = interval
    if direction == "similar":
        band = margin * abs(baseline) if baseline else margin
        if -band <= lo and hi <= band:
            return "holds", f"the whole interval lies within +-{band:.4g} ({margin:.0%} of the baseline)"
        if lo > band or hi < -band:
            return "reversed", f"the whole interval lies outside +-{band:.4g}"
        return "inconclusive", f"the interval overlaps the +-{band:.4g} band's edge"
    sign = 1.0 if direction == "higher" else -1.0
    lo, hi = sorted((sign * lo, sign * hi))
    if lo > 0:
        return "holds", "the difference lies in the paper's direction and its interval excludes zero"
    if hi < 0:
        return "reversed", "the difference lies against the paper's direction and its interval excludes zero"
    return "inconclusive", "the interval includes zero"


def paper_value(paper_numbers: Mapping[str, Any] | None, ref: Sequence[Any] | None, where: str = "") -> float | None:
    """The paper's printed number for ``ref = [paper, table, row selector, column]`` (None: no ref)."""
    if ref is None or paper_numbers is None:
        return None
    if not isinstance(ref, list) or len(ref) != 4:
        raise AtelierInputError(f"{where}: paper must be [paper, table, {{row selector}}, column], got {ref!r}")
    paper, table, row, column = ref
    rows = select(paper_numbers, [paper, table, "rows"], f"{where} (reproduce/paper_numbers.yaml)")
    value = select(rows, [row, column], f"{where} (reproduce/paper_numbers.yaml {paper}.{table})")
    return None if value is None else float(value)


def evaluate(claim: Claim, root: Path, level: float = 0.95,
             paper_numbers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ledger row of ``results/09_claims/claims.json``."""
    sides, curves = {}, {}
    for which, side in (("claimed", claim.claimed), ("baseline", claim.baseline)):
        sides[which] = side_values(side, root)
        sides[which].update(label=side.label, kind=side.kind, config=side.config, file=side.file,
                            paper=paper_value(paper_numbers, side.paper, f"claim {claim.id!r} {which}"))
        if side.curve:
            path = root / side.curve
            if path.is_file():
                rows = read_json(path)
                curves[which] = still_improving([float(r[side.curve_key]) for r in rows if side.curve_key in r])
            else:
                curves[which] = {"improving": None, "reason": f"{side.curve}: not present"}
    a, b = sides["claimed"]["values"], sides["baseline"]["values"]
    row: dict[str, Any] = {"id": claim.id, "paper": claim.paper, "where": claim.where, "quote": claim.quote,
                           "metric": claim.metric, "direction": claim.direction, "margin": claim.margin,
                           "claimed": sides["claimed"], "baseline": sides["baseline"], "curves": curves}
    if not a or not b:
        for s in sides.values():
            s.pop("replicates", None)
        row.update(depends_on=claim.depends_on, verdict="inconclusive", why="; ".join(s["reason"] for s in sides.values() if s["reason"]),
                   difference=None, interval=None)
        return row
    diff = statistics.fmean(a) - statistics.fmean(b)
    ra, rb = sides["claimed"].pop("replicates"), sides["baseline"].pop("replicates")
    sampling = None
    if ra and rb and len(ra) == len(rb):
        sampling = list(uncertainty.difference_interval(ra, rb, level))
    if claim.depends_on == "evaluation":
        interval = tuple(sampling) if sampling else None
        method = f"bootstrap over evaluation samples ({len(ra)} resamples; lib.evaluation.uncertainty)" if sampling else None
        no_interval = "no interval: a side has no bootstrap replicates"
    else:
        interval = welch_interval(a, b, level)
        method = "Welch t over seeds (difference of means)" if interval else None
        no_interval = "no interval: fewer than two seeds per side (a training-dependent comparison)"
    under = any(c.get("improving") for c in curves.values())
    v, why = verdict(claim.direction, interval, under, claim.margin, statistics.fmean(b), no_interval)
    sign = {"higher": 1.0, "lower": -1.0}.get(claim.direction)
    row.update(difference=diff, interval=list(interval) if interval else None, level=level,
               point_estimate_agrees=(sign * diff > 0) if sign is not None else None,
               seeds={"claimed": len(a), "baseline": len(b)}, depends_on=claim.depends_on,
               interval_method=method, sampling_interval=sampling,
               resamples=len(ra) if sampling else None, verdict=v, why=why)
    return row


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}


def ledger_path() -> Path:
    return repo_root() / "reproduce" / "claims.yaml"


def load_ledger(path: str | Path | None = None) -> list[Claim]:
    path = Path(path) if path is not None else ledger_path()
    if not path.is_file():
        raise AtelierInputError(f"{path}: claims ledger not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise AtelierInputError(f"{path}: not valid YAML ({err})") from None
    return parse_ledger(doc, str(path))


def ledger_files(claims: Sequence[Claim]) -> list[str]:
    """Every results file the ledger reads (a ``{seed}`` file as its folder): the claims stage's deps."""
    files = set()
    for c in claims:
        for side in (c.claimed, c.baseline):
            files.add(side.file.split("{seed}")[0].rstrip("/") if "{seed}" in side.file else side.file)
            if side.curve:
                files.add(side.curve)
    return sorted(files)


def run(profile: str, root: Path | None = None, level: float | None = None) -> dict[str, Any]:
    """Evaluate every claim of the ledger against ``root``'s results (default: :func:`lib.store.out_root`)
    and write ``results/09_claims/claims.json``; returns the written document's metrics. ``level``:
    the intervals' coverage (default params.yaml ``uncertainty.level``)."""
    P = lib_params.load(profile)
    level = float(P["uncertainty"]["level"]) if level is None else float(level)
    claims = load_ledger()
    problems = missing_configs(claims, P)
    if problems:
        raise AtelierInputError(f"{ledger_path()}: " + "; ".join(problems))
    paper_numbers = yaml.safe_load((repo_root() / "reproduce" / "paper_numbers.yaml").read_text())
    rows = [evaluate(c, Path(root) if root is not None else out_root(), level, paper_numbers) for c in claims]
    metrics = {"claims": rows, "summary": summarize(rows), "num_claims": len(rows)}
    prov = run_info(profile, int(P["seed"]), ledger="reproduce/claims.yaml",
                    interval={"training": {"method": "Welch t interval of the difference of means over seeds "
                                                         "(scipy.stats.t)", "needs": "at least two seeds per side"},
                              "evaluation": {"method": uncertainty.METHOD,
                                             "needs": "bootstrap replicates stored beside both sides' values"},
                              "level": level},
                    under_trained={"rule": "a side's training curve fell by more than this fraction between the "
                                           "10% window a quarter of the run before the end and the last 10%",
                                   "threshold": PLATEAU_DROP},
                    verdicts=list(VERDICTS))
    write_metrics(results_dir("09_claims") / "claims.json", metrics, prov)
    return metrics
