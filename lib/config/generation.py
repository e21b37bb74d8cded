"""Accessors of the ``generation`` section of a loaded profile (plain dicts in, plain values out)."""

from __future__ import annotations

from typing import Any, Mapping

from lib.io import AtelierInputError


def require_known(section: Mapping[str, Any], name: str) -> None:
    if name not in section["models"]:
        raise AtelierInputError(f"params.yaml: no generator named {name!r} in generation.models "
                                f"(known: {', '.join(section['models'])})")


def steps_of(section: Mapping[str, Any], name: str) -> int:
    require_known(section, name)
    return int(section["steps"].get(name, 0))


def is_active(section: Mapping[str, Any], name: str) -> bool:
    return steps_of(section, name) > 0


def seed_of(params: Mapping[str, Any], name: str) -> int:
    """The training seed of ``name``: its own ``seed`` if it is a seed replica, else the top-level one."""
    require_known(params["generation"], name)
    return int(params["generation"]["models"][name].get("seed", params["seed"]))


def seed_runs(params: Mapping[str, Any], name: str) -> dict[int, str]:
    """``{seed: entry name}`` of ``name`` and every seed replica of it (issue 17), original first."""
    models = params["generation"]["models"]
    require_known(params["generation"], name)
    runs = {seed_of(params, name): name}
    runs.update({seed_of(params, n): n for n, m in models.items() if m.get("replicates") == name})
    return runs
