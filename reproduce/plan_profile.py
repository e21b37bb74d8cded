"""Predict a profile's wall time from a measured run, before spending it (issue 15: "size each profile
by measuring").

Inputs, all measured: ``results/timing/<profile>.json`` (every stage's wall time in the last
``reproduce/run``, reproduce/stage_times.py) and each training stage's own metrics JSON (seconds spent
in its training loop and its step count). Model: a training stage costs ``fixed + per_step x steps``,
with ``per_step`` = training seconds / steps of that run and ``fixed`` = the rest of the stage (start-up,
evaluation, DVC); every other stage costs what it cost. Evaluation sizes (``eval_n``, ``rfid_n``) are
held fixed, so a plan that changes them is outside the model (the JSON says so).

    .venv/bin/python reproduce/plan_profile.py --scale 4            # every training stage 4x its steps
    .venv/bin/python reproduce/plan_profile.py --candidate extended # the steps of another params profile
    [--timing results/timing/default.json] [--out results/bench/profile_plan.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.io import AtelierInputError, atomic_write_json, read_json  # noqa: E402

UNIFASHION_PHASES = {"unifashion_phase1": "phase1", "unifashion_captioner": "captioner",
                     "unifashion_generator": "generator"}


def _training(stage: str, root: Path) -> list[tuple[str, float, int]] | None:
    """``[(steps key in the profile, training seconds, steps)]`` of one training stage's last run,
    read from its metrics JSON; None for a stage that does not train (or did not run)."""
    kind, _, name = stage.partition("@")

    def doc(rel: str) -> Mapping[str, Any] | None:
        path = root / rel
        return read_json(path) if path.is_file() else None

    if kind in ("tokenizer", "tokenizer_finetune"):
        d = doc(f"results/02_tokenizers/{name}/metrics.json")
        if d and not d["metrics"].get("skipped"):
            return [(f"tokenizers.steps.{name}", float(d["provenance"]["training"]["seconds"]),
                     int(d["metrics"]["steps"]))]
    elif kind == "generator":
        d = doc(f"results/03_generators/{name}/metrics.json")
        if d and not d["metrics"].get("skipped"):
            return [(f"generation.steps.{name}", float(d["provenance"]["training"]["seconds"]),
                     int(d["metrics"]["steps"]))]
    elif kind == "super_res":
        d = doc("results/03_generators/super_res/metrics.json")
        if d and not d["metrics"].get("skipped"):
            t, m = d["provenance"]["training"], d["metrics"]
            return [("super_res.steps", float(t["seconds"]), int(m.get("steps") or t["steps"])),
                    ("super_res.tokenizer_steps", float(t["tokenizer_seconds"]),
                     int(m.get("tokenizer_steps") or t.get("tokenizer_steps")))]
    elif kind in UNIFASHION_PHASES:
        phase = UNIFASHION_PHASES[kind]
        d = doc(f"results/06_unifashion/{phase}/metrics.json")
        if d:
            return [(f"unifashion.steps.{phase}", float(d["metrics"]["seconds"]), int(d["metrics"]["steps"]))]
    elif kind == "unifashion_phase2":
        d = doc("results/06_unifashion/phase2/metrics.json")
        if d:
            m = d["metrics"]
            return [("unifashion.steps.phase2", float(m["full"]["seconds"]), int(m["full"]["steps"])),
                    ("unifashion.steps.phase2_base", float(m["base"]["seconds"]), int(m["base"]["steps"]))]
    return None


def stage_costs(timing: Mapping[str, Any], root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """Per stage of the timed run: seconds, and for training stages the fixed / per-step split."""
    out = {}
    for s in timing["stages"]:
        if s["status"] != "ran" or s["seconds"] is None:
            continue
        entry: dict[str, Any] = {"seconds": float(s["seconds"])}
        parts = _training(s["stage"], root)
        if parts:
            train = sum(sec for _, sec, _ in parts)
            entry.update(fixed_seconds=max(0.0, entry["seconds"] - train),
                         loops=[{"steps_key": k, "train_seconds": sec, "steps": n, "seconds_per_step": sec / n}
                                for k, sec, n in parts if n > 0])
        out[s["stage"]] = entry
    return out


def _profile_steps(params: Mapping[str, Any], key: str) -> int:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise AtelierInputError(f"params.yaml: the candidate profile has no {key}")
        node = node[part]
    return int(node)


def predict(costs: Mapping[str, Mapping[str, Any]], steps_of) -> dict[str, Any]:
    """Predicted seconds per stage when every training loop runs ``steps_of(steps_key, measured_steps)``."""
    stages, total = {}, 0.0
    for name, c in costs.items():
        if "loops" not in c:
            stages[name] = {"measured_seconds": c["seconds"], "predicted_seconds": c["seconds"]}
        else:
            loops = [{**lp, "planned_steps": int(steps_of(lp["steps_key"], lp["steps"]))} for lp in c["loops"]]
            pred = c["fixed_seconds"] + sum(lp["seconds_per_step"] * lp["planned_steps"] for lp in loops)
            stages[name] = {"measured_seconds": c["seconds"], "predicted_seconds": pred,
                            "fixed_seconds": c["fixed_seconds"], "loops": loops}
        total += stages[name]["predicted_seconds"]
    return {"stages": stages, "predicted_repro_seconds": total,
            "measured_repro_seconds": sum(c["seconds"] for c in costs.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--scale", type=float, help="multiply every training stage's steps by this")
    group.add_argument("--candidate", help="a params.yaml profile whose steps to plan")
    ap.add_argument("--timing", type=Path, default=ROOT / "results" / "timing" / "default.json")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.timing.is_file():
        print(f"error: {args.timing}: no timed run (reproduce/run writes it)", file=sys.stderr)
        return 2
    timing = json.loads(args.timing.read_text())
    costs = stage_costs(timing)
    if args.scale is not None:
        plan = predict(costs, lambda key, n: round(n * args.scale))
        what = f"every training loop x{args.scale:g}"
    else:
        import lib.config as lib_params

        P = lib_params.load(args.candidate)
        plan = predict(costs, lambda key, n: _profile_steps(P, key))
        what = f"the steps of profile {args.candidate!r}"
    plan.update(plan=what, timing=str(args.timing.relative_to(ROOT) if args.timing.is_relative_to(ROOT) else args.timing),
                timing_git_revision=timing.get("git_revision"), stages_not_run_in_timing="cost 0 here (skipped then)",
                model="training stage = fixed + seconds_per_step x steps (both from the timed run); others as measured; "
                      "evaluation sizes held fixed")
    for name, s in sorted(plan["stages"].items(), key=lambda kv: -kv[1]["predicted_seconds"]):
        print(f"{name:36s} {s['measured_seconds'] / 60:7.1f} min -> {s['predicted_seconds'] / 60:7.1f} min")
    print(f"{'dvc repro':36s} {plan['measured_repro_seconds'] / 60:7.1f} min -> "
          f"{plan['predicted_repro_seconds'] / 60:7.1f} min ({what})")
    if args.out:
        atomic_write_json(args.out, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
