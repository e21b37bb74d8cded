"""A working copy for a profile other than ``default``, so that trying it leaves this checkout alone.

``reproduce/run --profile smoke`` used to rewrite 134 tracked files (results, the report, the
README's benchmark source) and leave ``params.yaml`` at ``profile: smoke`` (issue 20). The committed
``results/`` and ``dvc.lock`` belong to the default profile; every other profile now runs in
``runs/<profile>/`` (gitignored):

- a ``git clone --shared`` of this repository (objects shared, so it costs the work tree only)
  checked out at this checkout's HEAD, so provenance still records the git revision;
- with this checkout's uncommitted code laid over it (modified, added and deleted files outside
  ``results/`` and ``dvc.lock``), so what runs is what you have, with ``-dirty`` in provenance as here;
- ``data/`` and ``.venv`` linked to this checkout's, and DVC's cache shared with it
  (``.dvc/config.local``), so the run cache restores any stage already run with the same inputs.

    python reproduce/profile_copy.py runs/smoke      # create or refresh; prints the copy's path
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what a profile's own run writes: never copied from, or reset to, this checkout's versions
RUN_OUTPUTS = ("results/", "dvc.lock")
LINKED = ("data", ".venv")


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: git {' '.join(args)} in {repo} failed: {proc.stderr.strip()}")
    return proc.stdout


def _paths(repo: Path, *flags: str) -> list[str]:
    out = _git(repo, "ls-files", "-z", *flags).split("\0")
    return sorted({p for p in out if p and not p.startswith(RUN_OUTPUTS)})


def local_changes(repo: Path) -> tuple[list[str], list[str]]:
    """(files to copy: modified, added, untracked and not ignored; files deleted) of ``repo``'s work
    tree against its HEAD, outside the run outputs."""
    deleted = set(_paths(repo, "--deleted"))
    changed = [p for p in _paths(repo, "--modified", "--others", "--exclude-standard") if p not in deleted]
    return changed, sorted(deleted)


def sync(dest: Path, src: Path = ROOT) -> Path:
    """Create or refresh the copy at ``dest``; returns it. Idempotent; touches nothing in ``src``."""
    dest = dest.resolve()
    if dest == src or src in dest.parents and not dest.is_relative_to(src / "runs"):
        raise SystemExit(f"error: {dest}: a profile copy must live outside the checkout's tracked tree (runs/<profile>)")
    head = _git(src, "rev-parse", "HEAD").strip()
    fresh = not (dest / ".git").exists()
    if fresh:
        if dest.exists() and any(dest.iterdir()):
            raise SystemExit(f"error: {dest} exists and is not a profile copy; move it away or remove it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        _git(src, "clone", "--quiet", "--shared", "--no-checkout", str(src), str(dest))
    if fresh or _git(dest, "rev-parse", "HEAD").strip() != head:
        # a new commit here: start from it (the copy's results and dvc.lock too; DVC's run cache
        # brings back every stage whose inputs did not change)
        _git(dest, "checkout", "--quiet", "--force", "--detach", head)
    changed, deleted = local_changes(src)
    # what an earlier sync laid over the copy but is no longer changed here goes back to HEAD
    stale_changed, _ = local_changes(dest)
    for rel in stale_changed:
        if rel not in changed and rel not in LINKED:
            if _git(dest, "ls-files", "--", rel).strip():
                _git(dest, "checkout", "--quiet", "HEAD", "--", rel)
            else:
                (dest / rel).unlink(missing_ok=True)
    for rel in _paths(dest, "--deleted"):
        if rel not in deleted:
            _git(dest, "checkout", "--quiet", "HEAD", "--", rel)
    for rel in changed:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_bytes() != (src / rel).read_bytes():
            shutil.copy2(src / rel, target)
    for rel in deleted:
        (dest / rel).unlink(missing_ok=True)
    for name in LINKED:
        link = dest / name
        if (src / name).exists() and not link.is_symlink() and not link.exists():
            link.symlink_to(src / name)
    (dest / ".dvc").mkdir(exist_ok=True)
    cache = src / ".dvc" / "cache"
    (dest / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {os.path.relpath(cache, dest / '.dvc')}\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    print(sync(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
