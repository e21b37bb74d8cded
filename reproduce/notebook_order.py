"""Print the notebooks in pipeline order: the order their stages appear in dvc.yaml.

reproduce/test runs nbval on the notebooks in this order, so each smoke notebook finds the outputs
of the ones before it (the same order `dvc repro` runs them). Notebooks no stage names come last.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def ordered_notebooks(root: Path = ROOT) -> list[str]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    order: list[str] = []
    for stage in stages.values():
        cmd = stage.get("do", stage).get("cmd", "")
        cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
        for nb in re.findall(r"notebooks/[\w.-]+\.ipynb", cmd):
            if nb not in order:
                order.append(nb)
    rest = sorted(str(p.relative_to(root)) for p in (root / "notebooks").glob("*.ipynb"))
    return order + [nb for nb in rest if nb not in order]


if __name__ == "__main__":
    print("\n".join(ordered_notebooks()))
