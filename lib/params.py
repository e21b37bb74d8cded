"""``params.yaml``: profiles and their validation.

Each profile's parameters are the shared top-level sections deep-merged with
``profiles.<name>.<section>``. Sections with a schema below are checked strictly (unknown keys, wrong
types and out-of-range values are errors naming ``params.yaml`` and the dotted key), so a typo cannot
silently fall back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import yaml

from .io import AtelierInputError
from .paths import repo_root

PROFILES = ("smoke", "default", "gpu")


def _int(lo: int, hi: int | None = None, nullable: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer{' or null' if nullable else ''}, got {type(v).__name__} {v!r}"
        if v < lo or (hi is not None and v > hi):
            return f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}"
        return None
    return check


def _float(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {type(v).__name__} {v!r}"
        if not lo <= v <= hi:
            return f"must be in [{lo}, {hi}], got {v}"
        return None
    return check


#: section -> key -> checker returning an error message or None.
SCHEMA: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "data": {
        "captions_per_image": _int(1, 10),
        "val_size": _int(1, 59000),
        "heldout_per_category": _int(0, 39),
        "heldout_test_fraction": _float(0.0, 1.0),
        "max_train": _int(1, 55000, nullable=True),
        "max_val": _int(1, 59000, nullable=True),
        "max_test": _int(1, 10000, nullable=True),
    },
    "judges": {
        "width": _int(4, 512),
        "batch_size": _int(2, 8192),
        "lr": _float(1e-6, 1.0),
        "embed_dim": _int(8, 2048),
        "classifier_steps": _int(1, 10_000_000),
        "contrastive_steps": _int(1, 10_000_000),
        "eval_n": _int(10, 10000, nullable=True),
        "fid_n": _int(10, 10000),
    },
}
TOP_LEVEL = {"profile", "seed", "profiles"}


def read(path: str | Path | None = None) -> dict:
    path = Path(path) if path else repo_root() / "params.yaml"
    if not path.is_file():
        raise AtelierInputError(f"{path}: parameters file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise AtelierInputError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise AtelierInputError(f"{path}: expected a mapping at the top level")
    return raw


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(params: dict, where: str = "params.yaml") -> None:
    """Check known sections against :data:`SCHEMA`; raise one error naming every bad key."""
    errors = []
    seed = params.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        errors.append(f"seed: must be a non-negative integer, got {seed!r}")
    for section, checks in SCHEMA.items():
        values = params.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            errors.append(f"{section}: must be a mapping, got {type(values).__name__}")
            continue
        for key in values:
            if key not in checks:
                errors.append(f"{section}.{key}: unknown parameter (known: {', '.join(sorted(checks))})")
        for key, check in checks.items():
            if key not in values:
                errors.append(f"{section}.{key}: missing")
                continue
            problem = check(values[key])
            if problem:
                errors.append(f"{section}.{key}: {problem}")
    if errors:
        raise AtelierInputError(f"{where}: invalid parameters:\n  " + "\n  ".join(errors))


def load(profile: str | None = None, path: str | Path | None = None) -> dict:
    """Parameters of ``profile`` (default: the file's ``profile:``), merged and validated.

    The result has ``profile``, ``seed`` and one mapping per section.
    """
    raw = read(path)
    where = str(path or "params.yaml")
    profile = profile if profile is not None else raw.get("profile", "default")
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        raise AtelierInputError(
            f"{where}: unknown profile {profile!r}; choose one of {sorted(profiles) or list(PROFILES)}"
        )
    shared = {k: v for k, v in raw.items() if k not in TOP_LEVEL}
    merged = _merge(shared, profiles[profile] or {})
    merged["profile"] = profile
    merged["seed"] = raw.get("seed", 0)
    validate(merged, f"{where} (profile {profile!r})")
    return merged


def set_profile(profile: str, path: str | Path | None = None) -> Path:
    """Record ``profile`` as the active one in ``params.yaml`` (comments kept), after validating it."""
    import re

    from .io import atomic_write_text

    path = Path(path) if path else repo_root() / "params.yaml"
    load(profile, path)  # unknown names and bad values fail here, before anything is written
    text = path.read_text(encoding="utf-8")
    new, n = re.subn(r"(?m)^profile:.*$", f"profile: {profile}", text, count=1)
    if n != 1:
        raise AtelierInputError(f"{path}: no top-level 'profile:' line to set")
    if new != text:
        atomic_write_text(path, new)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Validate params.yaml and select the active profile.")
    parser.add_argument("--set-profile", metavar="NAME", help=f"one of {PROFILES}")
    parser.add_argument("--check", metavar="NAME", help="validate one profile and print its parameters")
    args = parser.parse_args()
    try:
        if args.set_profile:
            set_profile(args.set_profile)
            print(f"params.yaml: profile = {args.set_profile}")
        if args.check:
            print(yaml.safe_dump(load(args.check), sort_keys=False))
    except AtelierInputError as err:
        raise SystemExit(f"error: {err}")
