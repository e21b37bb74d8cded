"""Wall time of every stage of one ``dvc repro``: run it, pass its output through, and record when
DVC starts each stage (issue 15: "record the wall time of every stage of that run in a JSON").

DVC prints ``Running stage 'NAME':`` before a stage's command and ``Stage 'NAME' didn't change,
skipping`` for an up-to-date one; a stage ends where the next event (or the run) ends. The JSON
is rewritten atomically at every event, so an interrupted run still leaves the stages it finished.

    python reproduce/stage_times.py --profile default [--out PATH] [--started EPOCH] -- dvc repro [ARGS]

The command runs in its own process group, which is killed when this wrapper is stopped (SIGINT,
SIGTERM, SIGHUP) or killed (SIGKILL: a watcher process notices and kills the group), when a
``--watch-pid`` process (``reproduce/run`` passes its own) disappears, and when the command itself
dies and leaves stage processes behind (``kill -9`` of ``dvc``), so no stage outlives the run
that started it.

When a notebook stage fails, papermill prints its whole traceback (65 lines for a bad idx file, issue
18) before the library's one-line reason; the wrapper ends the run with that reason, read from the
error cell of the notebook the failed stage executed (``artifacts/executed/``), and records it in the
JSON as the stage's ``error``.

``--started``: when the whole run began (``reproduce/run`` passes its start, so environment and
data set-up count in ``total_seconds``). Default output: ``results/timing/<profile>.json``, except
the smoke profile's, which goes to ``artifacts/timing/smoke.json`` (a smoke run leaves the committed
results alone).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.io import AtelierInputError, atomic_write_json  # noqa: E402

RUNNING = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")
CHECKED_OUT = re.compile(r"Stage '([^']+)' is cached - skipping run, checking out outputs")


def default_out(profile: str) -> Path:
    return ROOT / ("artifacts" if profile == "smoke" else "results") / "timing" / f"{profile}.json"


class StageClock:
    """Turns DVC's log lines into per-stage wall times (``clock`` is injectable for tests)."""

    def __init__(self, profile: str, command: list[str], started: float | None = None, clock=time.time):
        self.clock = clock
        now = clock()
        self.doc: dict[str, Any] = {
            "profile": profile, "command": command,
            "run_started": _iso(started if started is not None else now), "repro_started": _iso(now),
            "setup_seconds": round(now - started, 1) if started is not None else 0.0,
            "stages": [], "finished": None, "returncode": None,
            "cpu_count": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "git_revision": _git_revision(),
            "definition": ("seconds: from DVC's 'Running stage' line of a stage to the next stage event or the end "
                           "of dvc repro (command, then DVC hashing and caching its outputs); skipped stages "
                           "(unchanged) cost only DVC's check"),
        }
        self.started = started if started is not None else now
        self.repro_started = now

    def feed(self, line: str) -> bool:
        """Record the stage event of ``line``, if any; returns whether there was one."""
        for pattern, status in ((RUNNING, "ran"), (SKIPPED, "skipped"), (CHECKED_OUT, "checked out")):
            m = pattern.search(line)
            if m:
                self._close()
                self.doc["stages"].append({"stage": m.group(1), "status": status, "offset_seconds":
                                           round(self.clock() - self.repro_started, 1), "seconds": None})
                return True
        return False

    def _close(self) -> None:
        if self.doc["stages"] and self.doc["stages"][-1]["seconds"] is None:
            last = self.doc["stages"][-1]
            last["seconds"] = round(self.clock() - self.repro_started - last["offset_seconds"], 1)

    def finish(self, returncode: int) -> dict[str, Any]:
        self._close()
        if returncode and self.doc["stages"] and self.doc["stages"][-1]["status"] == "ran":
            self.doc["stages"][-1]["status"] = "failed"
        now = self.clock()
        ran = [s for s in self.doc["stages"] if s["status"] == "ran"]
        self.doc.update(finished=_iso(now), returncode=returncode, repro_seconds=round(now - self.repro_started, 1),
                        total_seconds=round(now - self.started, 1), stages_ran=len(ran),
                        stage_seconds_ran=round(sum(s["seconds"] for s in ran), 1))
        return self.doc


def notebook_error(executed: Path, since: float) -> dict[str, Any] | None:
    """The first error a notebook executed at or after ``since`` (epoch seconds) under ``executed``
    holds: ``{"notebook", "cell", "error"}`` with ``error`` the exception's one line (``Name: message``),
    or None when no such notebook has one. Papermill writes the output notebook, error cell included,
    before it fails, so this is the failed stage's own reason."""
    if not executed.is_dir():
        return None
    recent = sorted((p for p in executed.rglob("*.ipynb") if p.stat().st_mtime >= since),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for path in recent:
        try:
            cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        except (OSError, ValueError):
            continue  # half written, or not a notebook: nothing to report from it
        code_cells = [c for c in cells if c.get("cell_type") == "code"]
        for number, cell in enumerate(code_cells, 1):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    evalue = " ".join(str(output.get("evalue", "")).split())
                    return {"notebook": os.path.relpath(path), "cell": number,
                            "error": f"{output.get('ename', 'Error')}: {evalue}" if evalue else str(output.get("ename"))}
    return None


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _git_revision() -> str:
    try:
        from lib.provenance import git_revision

        return git_revision()
    except Exception:  # noqa: BLE001 - timing must not fail for want of git
        return "unknown"


def run(command: list[str], profile: str, out: Path, started: float | None = None,
        lines: Iterable[str] | None = None, watch: Iterable[int] = ()) -> int:
    """Run ``command`` (or, for tests, consume ``lines``), echo its stdout, write the JSON at ``out``."""
    if not command and lines is None:
        raise AtelierInputError("stage_times: no command given (put it after --, e.g. -- dvc repro)")
    clock = StageClock(profile, command, started)
    if lines is not None:
        for line in lines:
            if clock.feed(line):
                atomic_write_json(out, clock.doc)
        atomic_write_json(out, clock.finish(0))
        return 0
    # stdout only is piped (DVC's log and the stages' prints); stderr (progress bars) stays live.
    # The command gets its own process group, which dies with this process (issue 18: a killed
    # `dvc repro` used to leave its stage's papermill running into the outputs a restart rewrites).
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
    watcher = start_watcher([os.getpid(), *watch], proc.pid)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    assert proc.stdout is not None
    # A reader thread, so that the command's death is seen even when an orphan it left behind
    # still holds the pipe open (``for line in proc.stdout`` would then wait for the orphan).
    lines_q: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines_q), daemon=True)
    reader.start()

    def echo(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()
        if clock.feed(line):
            atomic_write_json(out, clock.doc)

    interrupted = False
    try:
        while True:
            try:
                line = lines_q.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            if line is None:
                break
            echo(line)
        code = proc.wait()
    except KeyboardInterrupt:
        interrupted = True
        kill_group(proc.pid)
        code = proc.wait()
    finally:
        # the command is gone; whatever it left in its group (a stage of a `dvc` killed by
        # SIGKILL) would go on writing into outputs that DVC no longer locks (after an interrupt
        # the group was taken down above already)
        if not interrupted:
            kill_group(proc.pid, grace=5.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        watcher.terminate()
    reader.join(timeout=5.0)  # the group is gone, so the pipe is closed: take its last lines
    while not lines_q.empty():
        line = lines_q.get()
        if line is not None:
            echo(line)
    doc = clock.finish(code)
    if code and doc["stages"] and doc["stages"][-1]["status"] == "failed":
        last = doc["stages"][-1]
        found = notebook_error(Path.cwd() / "artifacts" / "executed", clock.repro_started + last["offset_seconds"])
        if found is not None:
            last["error"] = found
            print(f"error: stage '{last['stage']}' failed in {found['notebook']} (code cell {found['cell']}): "
                  f"{found['error']}", file=sys.stderr, flush=True)
    atomic_write_json(out, doc)
    return code


def _pump(stream, lines_q: "queue.Queue[str | None]") -> None:
    for line in stream:
        lines_q.put(line)
    lines_q.put(None)


def _raise_interrupt(signum, frame):  # SIGTERM / SIGHUP: stop the stage group like Ctrl-C
    raise KeyboardInterrupt


def kill_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group ``pgid``, then SIGKILL what is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# Self-contained (no imports of this module or lib: the watcher must start in milliseconds).
WATCH = """
import os, signal, sys, time
pgid, parents = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def alive(kill):
    try:
        kill()
        return True
    except ProcessLookupError:
        return False
while alive(lambda: os.killpg(pgid, 0)):
    if not all(alive(lambda p=p: os.kill(p, 0)) for p in parents):
        alive(lambda: os.killpg(pgid, signal.SIGTERM))
        for _ in range(50):
            if not alive(lambda: os.killpg(pgid, 0)):
                break
            time.sleep(0.2)
        alive(lambda: os.killpg(pgid, signal.SIGKILL))
        break
    time.sleep(0.5)
"""


def start_watcher(parents: Iterable[int], pgid: int) -> subprocess.Popen:
    """A small process that kills group ``pgid`` when any of ``parents`` disappears -- even by
    SIGKILL, which a parent itself cannot catch -- and exits when the group is gone."""
    return subprocess.Popen([sys.executable, "-c", WATCH, str(pgid), *(str(p) for p in parents)],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--started", type=float, default=None, help="epoch seconds when the whole run began")
    ap.add_argument("--watch-pid", type=int, action="append", default=[],
                    help="stop the run when this process disappears (reproduce/run passes its own PID)")
    args = ap.parse_args(argv)
    out = args.out or default_out(args.profile)
    code = run(command, args.profile, out, args.started, watch=args.watch_pid)
    print(f"[atelier] stage wall times: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
