"""Write the README's speed summaries from the benchmark JSONs (``results/bench/generation.json``,
``results/bench/training.json``).

    .venv/bin/python reproduce/readme_speed.py            # rewrite the block in README.md
    .venv/bin/python reproduce/readme_speed.py --check    # exit 1 if README.md is out of date

The block between ``<!-- speed:begin -->`` and ``<!-- speed:end -->`` is generated, never typed: it
names the JSON's sha256, and ``tests/test_readme_speed.py`` re-renders it from that JSON whenever
the file in the tree has that hash. After ``dvc repro bench_generation`` on another machine the hash
differs; run this script to refresh the README. The training block (``<!-- training:begin -->`` ...
``<!-- training:end -->``) is rendered the same way from ``results/bench/training.json``, and the
run-time block (``<!-- timing:begin -->`` ... ``<!-- timing:end -->``) from the per-stage wall times
of the last default ``reproduce/run`` (``results/timing/default.json``, reproduce/stage_times.py),
and the claims count (``<!-- claims:begin -->``) from ``results/09_claims/claims.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
JSON_PATH = Path("results/bench/generation.json")
TRAIN_BEGIN, TRAIN_END = "<!-- training:begin -->", "<!-- training:end -->"
TRAIN_JSON_PATH = Path("results/bench/training.json")
TIMING_BEGIN, TIMING_END = "<!-- timing:begin -->", "<!-- timing:end -->"
CLAIMS_BEGIN, CLAIMS_END = "<!-- claims:begin -->", "<!-- claims:end -->"
CLAIMS_JSON_PATH = Path("results/09_claims/claims.json")
TIMING_JSON_PATH = Path("results/timing/default.json")
TRAIN_PHASES = ("data", "forward", "perceptual", "gan_g", "backward", "optimizer", "gan_d")
METHODS = [("ar_recompute", "AR, prefix recomputed (Taming's sampler)"), ("ar_kv_cache", "AR, KV cache"),
           ("maskgit_8", "MaskGIT, 8 steps"), ("maskgit_12", "MaskGIT, 12 steps"), ("smart_T10", "SMART, T=10"),
           ("muse_cfg_batched", "Muse CFG, 12 steps (batched)"), ("super_res", "super-res stage, 8 steps")]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def render(doc: dict[str, Any], sha256: str) -> str:
    """The Markdown block (without the markers) for one benchmark JSON."""
    prov = doc.get("provenance", {})
    info = doc.get("device_info", {})
    where = info.get("device") or doc.get("device")
    lines = [f"Speed, from [`{JSON_PATH}`]({JSON_PATH}) (sha256 `{sha256[:16]}`; profile `{doc['profile']}`, "
             f"{where}, {doc['threads']} threads, {doc['dtype']}, git `{str(prov.get('git_revision'))[:8]}`; "
             f"median of {doc['timing']['min_repeats']}-{doc['timing']['max_repeats']} runs). Milliseconds per image and, "
             "in brackets, how many times faster than the recomputing AR baseline in the same run:", ""]
    grids = list(doc["grids"])
    batches = [f"batch_{b}" for b in doc["batches"]]
    header = "| method | " + " | ".join(f"{g} tokens, batch {b.split('_')[1]}" for g in grids for b in batches) + " |"
    lines += [header, "|---|" + "---:|" * (len(grids) * len(batches))]
    for key, label in METHODS:
        cells = []
        for g in grids:
            for b in batches:
                row = doc["grids"][g]["samplers"].get(b, {})
                m = row.get("methods", {}).get(key)
                cells.append("—" if m is None else
                             f"{_ms(m['seconds_per_image']['median'])} ({row['speedup_vs_ar_recompute'][key]:.1f}x)")
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, t in doc.get("targets", {}).items():
        if "value" not in t:
            lines.append(f"- target `{name}`: {t.get('skipped', 'not measured')}")
            continue
        value = f"{t['value']:.3g}" + (" ms" if name.endswith("_ms") else "")
        lines.append(f"- target: {t['target']} -> **{value}** ({'met' if t['met'] else 'not met'})")
    lines += ["", "Model weights are random (decoding time does not depend on them); "
              "`notebooks/08_speed.ipynb` has the full tables, the spread and the per-component breakdown."]
    return "\n".join(lines)


def render_training(doc: dict[str, Any], sha256: str) -> str:
    """The Markdown block for one ``bench_training.py`` JSON: step time, MFU and phase shares per model kind."""
    m, prov = doc["metrics"], doc.get("provenance", {})
    mm = m["matmul"]
    lines = [f"Training compute, from [`{TRAIN_JSON_PATH}`]({TRAIN_JSON_PATH}) (sha256 `{sha256[:16]}`; profile "
             f"`{prov.get('profile')}`, {prov.get('device_kind')}, {m['threads']} threads, git "
             f"`{str(prov.get('git_revision'))[:8]}`). One training step at the configured batch; FLOPs counted by "
             f"`FlopCounterMode` (matmul/conv only); MFU against the float32 matmul rate measured in the same run "
             f"({mm['float32_flops_per_s'] / 1e9:.0f} GFLOP/s; bfloat16/float32 matmul ratio here: "
             f"{mm['bfloat16_over_float32']:.2f}):", "",
             "| model | kind | batch | ms / step | samples / s | GFLOP / step | MFU (fp32) | "
             + " | ".join(f"{p} %" for p in TRAIN_PHASES) + " |",
             "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(TRAIN_PHASES)]
    for name, e in m["models"].items():
        if "step_seconds" not in e:
            lines.append(f"| {name} | {e.get('kind', '')} | — | {e.get('not_measured', 'not measured')} |"
                         + " |" * (4 + len(TRAIN_PHASES)))
            continue
        share = e["phase_share"]
        lines.append(f"| {name} | {e['kind']} | {e['batch_size']} | {_ms(e['step_seconds']['median'])} | "
                     f"{e['images_per_s']:.0f} | {e['flops_per_step'] / 1e9:.1f} | {e['mfu_float32']:.2f} | "
                     + " | ".join("—" if p not in share else f"{100 * share[p]:.0f}" for p in TRAIN_PHASES) + " |")
    for group, v in m.get("variants", {}).items():
        lines += ["", f"`{group}` step time relative to its float32 baseline, measured side by side: "
                  + ", ".join(f"{k} {e['ratio_to_baseline']:.2f}" for k, e in v.items() if k != "baseline") + "."]
    return "\n".join(lines)


def stage_group(stage: str) -> str:
    """``tokenizer@vq`` -> ``tokenizer``: DVC's foreach stages grouped by their stage name."""
    return stage.split("@", 1)[0]


def render_timing(doc: dict[str, Any], sha256: str, top: int = 8) -> str:
    """The Markdown block for one ``stage_times.py`` JSON: total wall time, per stage group, slowest stages."""
    ran = [s for s in doc["stages"] if s["status"] in ("ran", "failed") and s["seconds"] is not None]
    groups: dict[str, list[float]] = {}
    for s in ran:
        groups.setdefault(stage_group(s["stage"]), []).append(s["seconds"])
    done = doc.get("finished") is not None
    skipped = sum(1 for s in doc["stages"] if s["status"] == "skipped")
    rc = doc.get("returncode")
    last = doc["stages"][-1]["stage"] if doc["stages"] else None
    if not done:
        # A run killed outright (SIGKILL, a lost session) never writes its total: the stages it
        # completed are all there is, so that sum is shown as a lower bound, never as "0 min".
        state = (f"**killed** during `{last}` before it could record its end (the total is the sum of "
                 f"the stages that completed, a lower bound for a whole run)")
    elif isinstance(rc, int) and rc < 0:
        # A negative code is the signal that stopped dvc (subprocess convention): the stages after
        # the last one listed never started, so the total is a lower bound for a whole run.
        state = (f"**stopped by signal {-rc}** during `{last}` (later stages did not run; the total is "
                 f"a lower bound for a whole run)")
    else:
        state = f"finished with exit code {rc}"
    wall = doc.get("total_seconds") or sum(s["seconds"] for s in ran if s["status"] == "ran")
    lines = [f"Wall time of the last default `reproduce/run`, from [`{TIMING_JSON_PATH}`]({TIMING_JSON_PATH}) "
             f"(sha256 `{sha256[:16]}`; git `{str(doc.get('git_revision'))[:8]}`, started {doc['run_started']}, "
             f"{doc.get('cpu_count')} CPUs, load average at start "
             f"{(doc.get('load_average_at_start') or [float('nan')])[0]:.2f}): "
             f"**{wall / 60:.0f} min** in all, {state}; {len(ran)} stages ran, "
             f"{skipped} {'was' if skipped == 1 else 'were'} up to date (skipped).", "",
             "| stage group | stages run | minutes | share |", "|---|---:|---:|---:|"]
    total = sum(sum(v) for v in groups.values()) or 1.0
    for g, secs in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"| {g} | {len(secs)} | {sum(secs) / 60:.1f} | {100 * sum(secs) / total:.0f}% |")
    slow = sorted(ran, key=lambda s: -s["seconds"])[:top]
    lines += ["", "Slowest stages: " + ", ".join(f"`{s['stage']}` {s['seconds'] / 60:.1f} min" for s in slow) + "."]
    return "\n".join(lines)


def render_claims(doc: dict[str, Any], sha256: str) -> str:
    """The README's one-paragraph summary of the claims ledger (counts per verdict and per paper)."""
    m, prov = doc["metrics"], doc.get("provenance", {})
    s = m["summary"]
    papers: dict[str, dict[str, int]] = {}
    for r in m["claims"]:
        papers.setdefault(r["paper"], {}).setdefault(r["verdict"], 0)
        papers[r["paper"]][r["verdict"]] += 1
    per = "; ".join(f"{p}: " + ", ".join(f"{n} {v}" for v, n in sorted(c.items())) for p, c in papers.items())
    decided = [r for r in m["claims"] if r["verdict"] in ("holds", "reversed", "inconclusive")]
    boot = sum(1 for r in decided if r.get("interval") and r.get("depends_on") == "evaluation")
    seeds = sum(1 for r in decided if r.get("interval") and r.get("depends_on") != "evaluation")
    none = sum(1 for r in decided if not r.get("interval"))
    return (f"Claims ledger, from [`{CLAIMS_JSON_PATH}`]({CLAIMS_JSON_PATH}) (sha256 `{sha256[:16]}`; profile "
            f"`{prov.get('profile')}`, git `{str(prov.get('git_revision'))[:8]}`): of {m['num_claims']} relative claims "
            f"of the four papers, **{s['holds']} hold, {s['reversed']} are reversed, {s['inconclusive']} are "
            f"inconclusive and {s['under-trained']} are under-trained** at our scale ({per}). Of the claims not "
            f"under-trained, {boot} have a bootstrap interval over evaluation samples (same weights compared two "
            f"ways), {seeds} an interval over training seeds, and {none} no interval (one training seed per side, "
            f"or no stored replicates). "
            f"Verdicts are computed "
            f"by `lib/evaluation/claims.py` from the ledger `reproduce/claims.yaml`; `notebooks/09_claims.ipynb` shows each "
            f"claim with both sides, the interval and the paper's numbers.")


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"README.md must contain one {begin} ... {end} block")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def current_block(text: str, begin: str = BEGIN, end: str = END) -> str:
    return text.split(begin)[1].split(end)[0].strip("\n")


def load(path: Path) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro bench_generation` first")
    raw = path.read_bytes()
    return json.loads(raw), hashlib.sha256(raw).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    parser.add_argument("--json", type=Path, default=ROOT / JSON_PATH)
    parser.add_argument("--training-json", type=Path, default=ROOT / TRAIN_JSON_PATH)
    parser.add_argument("--timing-json", type=Path, default=ROOT / TIMING_JSON_PATH)
    parser.add_argument("--claims-json", type=Path, default=ROOT / CLAIMS_JSON_PATH)
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    try:
        doc, sha = load(args.json)
        tdoc, tsha = load(args.training_json)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = args.readme.read_text()
    new = replace_block(text, render(doc, sha))
    new = replace_block(new, render_training(tdoc, tsha), TRAIN_BEGIN, TRAIN_END)
    if args.timing_json.is_file():  # absent until a default reproduce/run has been timed
        rdoc, rsha = load(args.timing_json)
        new = replace_block(new, render_timing(rdoc, rsha), TIMING_BEGIN, TIMING_END)
    if args.claims_json.is_file():  # absent until the claims stage has run
        cdoc, csha = load(args.claims_json)
        new = replace_block(new, render_claims(cdoc, csha), CLAIMS_BEGIN, CLAIMS_END)
    if args.check:
        if new != text:
            print(f"{args.readme}: speed block is out of date; run reproduce/readme_speed.py", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    print(f"updated {args.readme} from {args.json} ({sha[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
