"""``python -m lib.stages <stage> --profile P [--name N]``: run one DVC stage (see :mod:`lib.stages`).

Only the module the stage needs is imported, so a stage's code is its own import closure (the one
dvc.yaml's deps must cover: reproduce/dvc_deps.py).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

from lib.io import AtelierInputError
from lib.stages import HTML_REPORTS, MODULE_NOTEBOOKS, MODULE_STAGES, NOTEBOOK_STAGES
from lib.stages.persist import prepare


def run_notebook(stage: str, profile: str) -> int:
    """Execute the stage's notebook with papermill into ``artifacts/executed/`` (its log streamed)."""
    notebook = Path(NOTEBOOK_STAGES[stage])
    target = Path("artifacts/executed") / notebook.name
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", "-k", "python3", "--log-output", str(notebook), str(target),
           "-p", "profile", profile]
    print("+ papermill", " ".join(cmd[3:]), flush=True)
    code = subprocess.call(cmd)
    if code == 0 and stage in HTML_REPORTS:
        out = Path(HTML_REPORTS[stage])
        out.mkdir(parents=True, exist_ok=True)
        code = subprocess.call([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--no-input",
                                "--output-dir", str(out), "--output", notebook.stem.split("_", 1)[-1], str(target)])
    return code


def main(argv: list[str] | None = None) -> int:
    stages = sorted([*MODULE_STAGES, *NOTEBOOK_STAGES])
    parser = argparse.ArgumentParser(prog="python -m lib.stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=stages, metavar="STAGE", help="one of: " + ", ".join(stages))
    parser.add_argument("--profile", required=True)
    parser.add_argument("--name", help="the foreach entry (tokenizer, tokens, generator stages)")
    args = parser.parse_args(argv)
    named = args.stage in MODULE_STAGES and MODULE_STAGES[args.stage][2]
    if named != (args.name is not None):
        parser.error(f"stage {args.stage} " + ("needs --name" if named else "takes no --name"))
    try:
        for line in prepare(args.stage, args.name, args.profile):  # persisted checkpoints: resume or start over
            print(f"[{args.stage}{'@' + args.name if args.name else ''}] {line}", flush=True)
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.stage in NOTEBOOK_STAGES:
        return run_notebook(args.stage, args.profile)
    module, command, named = MODULE_STAGES[args.stage]
    sub = [command]
    if args.stage in MODULE_NOTEBOOKS:
        sub.append(MODULE_NOTEBOOKS[args.stage])
    sub += ["--profile", args.profile]
    if named:
        sub += ["--config" if args.stage.startswith("tokenizer") else "--name", args.name]
    return importlib.import_module(module).main(sub)


if __name__ == "__main__":
    sys.exit(main())
