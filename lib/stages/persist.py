"""Resume under ``dvc repro`` (issue 18.1): checkpoints survive a killed stage, stale ones do not.

Training stages keep their checkpoint folder across runs (``persist: true`` in dvc.yaml), so a
stage killed after its step-N checkpoint resumes from step N when ``dvc repro`` runs it again
(:class:`lib.training.ResumableTrainer` does the resuming). DVC also re-runs a stage because its code,
settings or inputs changed; a kept checkpoint would then resume -- or, complete, skip -- training
that the new code and settings never did. So before a stage runs, every persisted folder gets a
marker (:data:`MARKER`) with the stage's *fingerprint*: its command, the values of the params it
declares and the content of every dep (code and data), resolved for this profile and foreach name.
A folder whose marker is missing or differs is emptied first (the run starts from scratch); one
whose marker matches is an interrupted run of the same stage and resumes.

The fingerprint is deterministic (sorted JSON of content hashes), so the marker is byte-identical
between runs with the same inputs and the output folders stay reproducible.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from lib.io import AtelierInputError, atomic_write_json, read_json
from lib.store import out_root, repo_root

MARKER = ".atelier-stage.json"
_PLACEHOLDER = re.compile(r"\$\{([\w.]+)\}")


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    value: Any = tree
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _substitute(text: str, env: Mapping[str, Any]) -> str:
    def one(m: re.Match) -> str:
        try:
            return str(_lookup(env, m.group(1)))
        except KeyError:
            raise AtelierInputError(f"dvc.yaml: placeholder ${{{m.group(1)}}} names nothing in params.yaml") from None
    return _PLACEHOLDER.sub(one, text)


def _entry_path(entry: Any) -> tuple[str, dict]:
    return (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))


def resolved_stage(stage: str, name: str | None, profile: str, root: Path | None = None) -> dict[str, Any]:
    """``{cmd, deps, params, persist}`` of ``stage`` (the ``name`` entry of a foreach stage) with every
    ``${...}`` resolved against params.yaml for ``profile``; ``persist`` lists the persisted outs."""
    root = Path(root) if root is not None else repo_root()
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    if stage not in stages:
        raise AtelierInputError(f"dvc.yaml: no stage {stage!r}")
    raw_params = yaml.safe_load((root / "params.yaml").read_text())
    env: dict[str, Any] = {**raw_params, "profile": profile}
    st = stages[stage]
    body = st.get("do", st)
    if "foreach" in st:
        if name is None:
            raise AtelierInputError(f"dvc.yaml: stage {stage!r} is a foreach stage: give the entry's name")
        items = st["foreach"]
        if isinstance(items, str):
            items = _lookup(raw_params, items.strip("${} "))
        if name not in items:
            raise AtelierInputError(f"dvc.yaml: stage {stage!r} has no entry {name!r}")
        env.update(key=name, item=items[name] if isinstance(items, Mapping) else name)
    outs = [_entry_path(o) for o in body.get("outs", []) or []]
    return {
        "cmd": " ".join(_substitute(body["cmd"], env).split()),
        "deps": [_substitute(d, env) for d in body.get("deps", []) or []],
        "params": [_substitute(p, env) for p in body.get("params", []) or []],
        "persist": [_substitute(path, env) for path, opts in outs if opts.get("persist")],
        "_values": env,
    }


def content_hash(path: Path) -> str:
    """sha256 over the sorted relative names and bytes of every file at or below ``path``
    ("missing" when there is nothing there)."""
    if not path.exists():
        return "missing"
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if f != path else b".")
        h.update(b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def fingerprint(spec: Mapping[str, Any], root: Path | None = None) -> dict[str, Any]:
    """What makes two runs of a stage the same run: command, declared params' values, deps' content.

    Code deps are read from the repository, data deps from :func:`lib.store.out_root` (where the
    stages wrote them: the repository under ``dvc repro``, ``$ATELIER_OUT`` in tests)."""
    root = Path(root) if root is not None else repo_root()
    params = {}
    for key in spec["params"]:
        try:
            params[key] = _lookup(spec["_values"], key)
        except KeyError:
            params[key] = None  # DVC refuses a missing param before this runs; keep the record total
    deps = {}
    for dep in spec["deps"]:
        base = root if dep.startswith(("lib", "notebooks", "reproduce")) else out_root()
        deps[dep] = content_hash(base / dep)
    body = {"cmd": spec["cmd"], "params": params, "deps": deps}
    body["sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return body


def prepare(stage: str, name: str | None, profile: str, root: Path | None = None) -> list[str]:
    """Before ``stage`` runs: empty each persisted output whose marker is not this run's fingerprint,
    then write the marker. Returns one line per persisted output saying what was done."""
    spec = resolved_stage(stage, name, profile, root)
    if not spec["persist"]:
        return []
    fp = fingerprint(spec, root)
    said = []
    for rel in spec["persist"]:
        folder = out_root() / rel
        marker = folder / MARKER
        old = None
        if marker.is_file():
            try:
                old = read_json(marker).get("sha256")
            except (AtelierInputError, AttributeError):
                old = None
        if folder.exists() and old == fp["sha256"]:
            said.append(f"{rel}: kept (an interrupted run of this same stage: training resumes from its checkpoint)")
        else:
            if folder.exists():
                shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
                why = "no stage marker" if old is None else "made by other code, settings or inputs"
                said.append(f"{rel}: emptied ({why}); training starts from step 0")
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, fp)
    return said
