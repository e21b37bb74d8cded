"""Which committed results were not produced by the committed code: the README's freshness block.

    .venv/bin/python reproduce/freshness.py            # rewrite the block in README.md
    .venv/bin/python reproduce/freshness.py --check    # exit 1 if README.md says otherwise

``dvc status`` compares every stage's recorded inputs (``dvc.lock``: code, notebooks, params, the
outputs of earlier stages) with the checkout. A stage whose inputs changed since it last ran is
*stale*: its committed tables and metrics came from older code or settings. Missing cached outputs
(a clone without the DVC cache: checkpoints, ``artifacts/``) are not staleness and are ignored, so a
fresh clone gives the same answer as the machine that ran the stages. The block between
``<!-- freshness:begin -->`` and ``<!-- freshness:end -->`` lists the stale stages and what changed,
and ``tests/test_freshness.py`` fails when it disagrees with ``dvc status``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- freshness:begin -->", "<!-- freshness:end -->"


def dvc_status(root: Path = ROOT) -> dict[str, Any]:
    """``dvc status --json`` of the checkout at ``root`` (every stage of dvc.yaml)."""
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"dvc status failed in {root}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout or "{}")


def lock_stages(root: Path = ROOT) -> dict[str, Any]:
    import yaml

    return (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {})


def remade_upstream(lock: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{stage: [input (re-made by S), ...]}``: a recorded input that is another stage's output and
    whose hash in dvc.lock differs from that stage's recorded output: the upstream stage ran again
    after this one. Read from dvc.lock alone, so a clone without the cached outputs sees it too."""
    made = {o["path"]: (name, o.get("md5")) for name, st in lock.items() for o in st.get("outs", []) or []}
    out: dict[str, list[str]] = {}
    for name, st in lock.items():
        for d in st.get("deps", []) or []:
            maker = made.get(d["path"])
            if d["path"].startswith("artifacts/") and maker and maker[0] != name and maker[1] != d.get("md5"):
                out.setdefault(name, []).append(f"{d['path']} (re-made by {maker[0]})")
    return out


def stale(status: Mapping[str, Any], lock: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """``{stage: [changed input, ...]}`` of the stages whose recorded inputs differ from the checkout.

    Inputs under ``artifacts/`` (DVC-cached outputs of earlier stages) are judged from dvc.lock
    (:func:`remade_upstream`), not from the working tree, where they are absent in a clone and, on
    the machine that ran the stages, may be local rebuilds; changed outputs are not staleness."""
    out: dict[str, list[str]] = {k: list(v) for k, v in remade_upstream(lock or {}).items()}
    for stage, items in status.items():
        if stage.endswith(".dvc"):
            continue  # a data import (data.dvc), not a stage
        changed: list[str] = []
        for item in items:
            if item == "changed command":
                changed.append("its command")
            if not isinstance(item, Mapping):
                continue
            for kind, entries in item.items():
                if kind != "changed deps" or not isinstance(entries, Mapping):
                    continue
                for path, state in entries.items():
                    if isinstance(state, Mapping):  # params: {key: state}
                        keys = sorted(k for k, s in state.items() if s != "deleted")
                        if keys:
                            changed.append(f"{path} ({', '.join(keys)})")
                    elif state != "deleted" and not path.startswith("artifacts/"):
                        changed.append(path)
        if changed:
            out[stage] = out.get(stage, []) + changed
    return {k: sorted(set(v)) for k, v in out.items()}


def stage_count(root: Path = ROOT) -> int:
    """Stages recorded in dvc.lock (``foreach`` entries counted one by one)."""
    return len(lock_stages(root))


def render(stages: Mapping[str, list[str]], total: int) -> str:
    """The Markdown block (without markers)."""
    if not stages:
        return (f"Freshness (`dvc status`, checked by `tests/test_freshness.py`): all {total} stages' committed "
                "results come from the committed code and settings.")
    lines = [f"Freshness (`dvc status`, checked by `tests/test_freshness.py`): **{len(stages)} of {total} stages are "
             "stale**, i.e. their committed results were produced by older code or settings than what is committed "
             "(treat their tables as provisional until `reproduce/run` re-runs them); the rest come from the "
             "committed code.", "", "| stale stage | inputs changed since it ran |", "|---|---|"]
    for stage, changed in sorted(stages.items()):
        shown = ", ".join(f"`{c}`" for c in changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        lines.append(f"| `{stage}` | {shown} |")
    return "\n".join(lines)


def _readme_blocks():
    """reproduce/readme_speed.py's marker-block helpers (one implementation for every README block)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_speed", Path(__file__).with_name("readme_speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def current_block(text: str) -> str:
    return _readme_blocks().current_block(text, BEGIN, END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's block is out of date")
    args = parser.parse_args(argv)
    status = dvc_status()
    block = render(stale(status, lock_stages()), stage_count())
    readme = ROOT / "README.md"
    text = readme.read_text()
    if args.check:
        if current_block(text) != block:
            print("README.md: the freshness block differs from dvc status; run reproduce/freshness.py", file=sys.stderr)
            return 1
        return 0
    new = _readme_blocks().replace_block(text, block, BEGIN, END)
    if new != text:
        readme.write_text(new)
    print(f"README.md freshness: {block.splitlines()[0][:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
