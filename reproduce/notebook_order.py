"""The pipeline's steps in dvc.yaml order, for running it under the test harness.

``python reproduce/notebook_order.py`` prints the notebooks in pipeline order (the order their
stages appear in dvc.yaml; notebooks no stage names come last).

``python reproduce/notebook_order.py --steps PROFILE`` prints one step per line for reproduce/test:

- ``nbval <notebook> [name=value ...]``: run the notebook under pytest --nbval with these papermill
  parameters (plus ``profile``);
- ``cmd <shell command>``: a stage that is not a plain notebook (a ``foreach`` entry beyond the
  first the profile trains, a Python entry point), run as is.

``foreach`` stages are expanded over their items from params.yaml; entries the profile gives 0
steps still get their 'skipped' outputs, as under ``dvc repro``, but written by one ``skip`` command
per stage (the same function, one process instead of one per name).
Benchmark stages (``bench_*``) are left out: the tests run the benchmarks themselves.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = re.compile(r"notebooks/[\w.-]+\.ipynb")
#: a foreach stage command whose module has a ``skip`` subcommand for names the profile does not train
SKIPPABLE = re.compile(r"python -m lib\.stages (tokenizer|tokenizer_finetune|generator|tokens) .*--name (\S+)")
#: the module (and its ``skip`` flag) that writes a skipped entry of those stages
SKIP_MODULES = {"tokenizer": ("lib.stages.tokenizer", "config"), "tokenizer_finetune": ("lib.stages.tokenizer", "config"),
                "generator": ("lib.stages.generator", "name"),
                "tokens": ("lib.stages.tokens", "name")}


def _stage_table(root: Path):
    """lib/stages/__init__.py's tables (plain data), read without importing any stage module."""
    spec = importlib.util.spec_from_file_location("_stage_table", root / "lib" / "stages" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebooks_of(cmd: str, root: Path) -> list[str]:
    """The notebooks a stage command runs: named in it, or through ``python -m lib.stages <stage>``."""
    found = NOTEBOOK.findall(cmd)
    m = re.search(r"python -m lib\.stages (\w+)", cmd)
    if m:
        found += [e for e in _stage_table(root).stage_entries(m.group(1)) if e.endswith(".ipynb")]
    return found


def ordered_notebooks(root: Path = ROOT) -> list[str]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    order: list[str] = []
    for stage in stages.values():
        cmd = stage.get("do", stage).get("cmd", "")
        cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
        for nb in _notebooks_of(cmd, root):
            if nb not in order:
                order.append(nb)
    rest = sorted(str(p.relative_to(root)) for p in (root / "notebooks").glob("*.ipynb"))
    return order + [nb for nb in rest if nb not in order]


def _lookup(params: dict, dotted: str):
    value = params
    for part in dotted.split("."):
        value = value[part]
    return value


def _substitute(text: str, env: dict) -> str:
    return re.sub(r"\$\{([\w.]+)\}", lambda m: str(_lookup(env, m.group(1))), text)


def pipeline_steps(profile: str, root: Path = ROOT) -> list[tuple[str, str]]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    steps: list[tuple[str, str]] = []
    seen_notebooks: set[str] = set()
    for name, stage in stages.items():
        if name.startswith("bench"):
            continue
        env = {**params, "profile": profile}
        if "foreach" in stage:
            if isinstance(stage["foreach"], list):
                # a list of tokenizer names (the tokens stage): the tokenizers' step counts decide
                items = {key: key for key in stage["foreach"]}
                section = "tokenizers"
            else:
                path = stage["foreach"].strip("${} ")
                items = _lookup(params, path)
                section = path.split(".")[0]
            # profiles.<p>.<section>.steps says which entries the profile trains (0 = a 'skipped' marker)
            counts = params.get("profiles", {}).get(profile, {}).get(section, {}).get("steps", {})
            skipped: dict[tuple[str, str], list[str]] = {}
            for key, item in items.items():
                cmd = _substitute(stage["do"]["cmd"], {**env, "key": key, "item": item})
                nbs = _notebooks_of(cmd, root)
                trained = int(counts.get(key, 0)) > 0
                group = SKIPPABLE.search(cmd)
                if nbs and nbs[0] not in seen_notebooks and trained:
                    seen_notebooks.add(nbs[0])
                    steps.append(("nbval", f"{nbs[0]} config={key}"))
                elif not trained and group and group.group(2) == key:
                    # every entry this profile skips, in one process (`skip` writes what `stage` /
                    # `train` writes for a skipped name; a process costs seconds of imports)
                    skipped.setdefault(SKIP_MODULES[group.group(1)], []).append(key)
                else:
                    steps.append(("cmd", " ".join(cmd.split())))
            for (module, flag), keys in skipped.items():
                steps.append(("cmd", f"python -m {module} skip --profile {profile} --{flag} {' '.join(keys)}"))
            continue
        cmd = " ".join(_substitute(stage["cmd"], env).split())
        nbs = _notebooks_of(cmd, root)
        if nbs and ("papermill" in cmd or "python -m lib.stages" in cmd):
            steps.append(("nbval", nbs[0]))
            seen_notebooks.add(nbs[0])
        else:
            steps.append(("cmd", cmd))
    return steps


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--steps":
        for kind, what in pipeline_steps(sys.argv[2]):
            print(f"{kind} {what}")
    else:
        print("\n".join(ordered_notebooks()))
