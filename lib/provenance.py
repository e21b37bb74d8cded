"""What every metrics JSON records about how it was computed.

The brief asks each metrics file to say: metric implementation and version, feature network and its
weights' hash, sample count, seed, profile, git revision and device. :func:`run_info` collects the
run-level part; metric code adds the metric-level part and :func:`write_metrics` joins them.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from lib.io import atomic_write_json
from lib.store import repo_root


def git_revision() -> str:
    """HEAD's commit (with ``-dirty`` when the work tree differs), or ``unknown`` outside git."""
    try:
        root = repo_root()
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "lib", "notebooks", "reproduce"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def device_info() -> dict[str, Any]:
    # lib.io / lib.provenance stay torch-free for lib.config (issue 16)
    import torch

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda_devices"] = torch.cuda.device_count()
    else:
        info["device"] = f"cpu ({os.cpu_count()} cores)"
    return info


def run_info(profile: str, seed: int, **extra: Any) -> dict[str, Any]:
    """Run-level provenance: profile, seed, git revision, device and library versions."""
    return {
        "profile": profile,
        "seed": seed,
        "git_revision": git_revision(),
        "device": device_info(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def portable_paths(value: Any, root: str | Path | None = None) -> Any:
    """``value`` with every string that is an absolute path inside the repository ``root`` made
    relative to it (posix), recursively through dicts, lists and tuples: a metrics JSON then reads
    the same on every checkout (issue 18), and names files a reader can open from the repo root."""
    base = str(Path(root) if root is not None else repo_root()).rstrip("/") + "/"
    if isinstance(value, str):
        return value[len(base):] if value.startswith(base) else value
    if isinstance(value, Mapping):
        return {k: portable_paths(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_paths(v, base) for v in value]
    return value


def write_metrics(path: str | Path, metrics: Mapping[str, Any], provenance: Mapping[str, Any]) -> Path:
    """Write ``{"metrics": ..., "provenance": ...}`` atomically; ``provenance`` gains peak RSS.
    Absolute paths inside the repository are written relative to it (:func:`portable_paths`)."""
    prov = dict(provenance)
    prov.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    return atomic_write_json(path, portable_paths({"metrics": dict(metrics), "provenance": prov}))
