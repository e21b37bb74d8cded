"""Share trained models through a DVC remote (issue 20, item 4).

Checkpoints, token caches and executed notebooks live in DVC's cache, which is local to one machine:
without a remote, a colleague's clone has to retrain everything (~2 h 20 min on 2 cores). With one,
``reproduce/run`` fetches whatever the remote already holds before ``dvc repro`` (so the stages whose
inputs did not change are skipped) and sends what it produced afterwards.

    reproduce/run --remote /mnt/team/atelier-dvc     # set it once (a local or network directory)
    reproduce/run                                    # later runs pull before and push after
    python reproduce/dvc_remote.py show              # which remote, if any

The remote is written to ``.dvc/config.local`` (not committed: the path is this machine's), as DVC's
default remote named ``atelier``. Other storage works the same way once its DVC plugin is installed,
e.g. ``--remote s3://bucket/atelier`` (``uv pip install dvc-s3``) or ``--remote ssh://host/srv/atelier``
(``dvc-ssh``); see https://dvc.org/doc/command-reference/remote/add.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the name ``--remote`` gives the remote it configures
NAME = "atelier"


class RemoteError(RuntimeError):
    pass


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    if check and proc.returncode:
        msg = (proc.stderr or proc.stdout).strip()
        raise RemoteError(f"dvc {' '.join(args)} in {repo} failed (exit {proc.returncode}): {msg}")
    return proc


def is_url(location: str) -> bool:
    return "://" in location


def default_remote(repo: Path = ROOT) -> tuple[str, str] | None:
    """``(name, url)`` of the repository's default DVC remote, or None when it has none."""
    proc = _dvc(repo, "remote", "default", check=False)
    name = proc.stdout.strip()
    if proc.returncode or not name:
        return None
    return name, _dvc(repo, "config", f"remote.{name}.url").stdout.strip()


def set_remote(location: str, repo: Path = ROOT, name: str = NAME) -> str:
    """Make ``location`` (a directory, created if missing, or a URL) the default remote of ``repo``
    in its ``.dvc/config.local``; returns the URL written."""
    if not location.strip():
        raise RemoteError("--remote: empty location; give a directory (e.g. /mnt/team/atelier-dvc) or a URL")
    if is_url(location):
        url = location
    else:
        path = Path(location).expanduser().resolve()
        if path == repo.resolve() or repo.resolve() in path.parents:
            raise RemoteError(f"--remote {location}: a remote inside the checkout would be committed or cleaned; "
                              "choose a directory outside it")
        if path.exists() and not path.is_dir():
            raise RemoteError(f"--remote {location}: exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        url = str(path)
    _dvc(repo, "remote", "add", "--local", "--default", "--force", name, url)
    return url


def copy_remote(src: Path, dest: Path) -> tuple[str, str] | None:
    """Give ``dest`` (a profile copy, reproduce/profile_copy.py) the default remote of ``src``."""
    remote = default_remote(src)
    if remote is not None:
        _dvc(dest, "remote", "add", "--local", "--default", "--force", *remote)
    return remote


def pull(repo: Path = ROOT) -> str:
    """Fetch and check out every output the default remote holds (a no-op without a remote); what it
    lacks is left for ``dvc repro`` to build."""
    remote = default_remote(repo)
    if remote is None:
        return "no DVC remote configured (reproduce/run --remote DIR sets one): everything comes from this machine's cache"
    proc = _dvc(repo, "pull", "--allow-missing", check=False)
    if proc.returncode:
        raise RemoteError(f"dvc pull from {remote[1]} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return f"pulled from remote {remote[0]} ({remote[1]}): {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else 'done'}"


def push(repo: Path = ROOT) -> str:
    """Send every cached output of the current ``dvc.lock`` to the default remote (a no-op without one)."""
    remote = default_remote(repo)
    if remote is None:
        return "no DVC remote configured: trained models stay in this machine's cache (reproduce/run --remote DIR shares them)"
    proc = _dvc(repo, "push", check=False)
    if proc.returncode:
        raise RemoteError(f"dvc push to {remote[1]} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return f"pushed to remote {remote[0]} ({remote[1]}): {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else 'done'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path.cwd(), help="the DVC repository (default: the current directory)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("set", help="make LOCATION the default remote").add_argument("location")
    sub.add_parser("copy", help="give the repository DEST the default remote of --repo").add_argument("dest", type=Path)
    sub.add_parser("show")
    sub.add_parser("pull")
    sub.add_parser("push")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "set":
            print(f"DVC remote {NAME} -> {set_remote(args.location, args.repo)} (in .dvc/config.local)")
        elif args.cmd == "copy":
            copy_remote(args.repo, args.dest)
        elif args.cmd == "show":
            remote = default_remote(args.repo)
            print("no DVC remote configured" if remote is None else f"{remote[0]} {remote[1]}")
        else:
            print((pull if args.cmd == "pull" else push)(args.repo))
    except RemoteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
