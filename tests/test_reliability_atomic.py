"""Issue 8, guarantee (2): outputs are written to a temporary file and renamed, so a kill at any
moment leaves the old or the new file, never a truncated one; a truncated, corrupt or mismatched
checkpoint is refused with an error naming the file and what is wrong, and refusing it loses nothing.

The writers run in forked child processes that are SIGKILLed at random moments while they rewrite
the same target in a loop; a naive (non-atomic) writer killed the same way is the control showing
that the kills do land mid-write.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import random
import time
from pathlib import Path

import pytest
import torch

from lib.io import AtelierInputError, atomic_write_json, load_checkpoint, read_json, save_checkpoint
from lib.store import repo_root
from lib.training import ResumableTrainer

N_ROWS = 200_000          # ~1.4 MB of indented JSON: a write takes tens of ms, long enough to be hit
KILLS = 8
ARCH = {"name": "toy", "dim": 4}
# Two payloads, prepared before forking (no tensor maths in the children): version k holds
# FULL[k % 2], so a file mixing two versions, or a torn one, cannot pass the checks below.
FULL = (torch.zeros(1 << 20), torch.ones(1 << 20))


def _json_writer(target: str, started) -> None:
    for version in range(1, 10**9):
        atomic_write_json(target, {"version": version, "rows": [version] * N_ROWS})
        started.set()


def _streaming_json_writer(target: str, started) -> None:
    from lib.io import atomic_path

    for version in range(1, 10**9):
        # Streams to the temporary file for the whole serialisation, so kills land mid-write.
        with atomic_path(target) as tmp, open(tmp, "w") as fh:
            json.dump({"version": version, "rows": [version] * N_ROWS}, fh, indent=2)
        started.set()


def _naive_json_writer(target: str, started) -> None:
    for version in range(1, 10**9):
        with open(target, "w") as fh:  # the control: what atomic_write_json replaces
            json.dump({"version": version, "rows": [version] * N_ROWS}, fh, indent=2)
        started.set()


def _checkpoint_writer(target: str, started) -> None:
    for version in range(1, 10**9):
        save_checkpoint(target, {"w": FULL[version % 2]}, {"arch": ARCH, "version": version})
        started.set()


def _check_json(path: Path) -> int:
    data = read_json(path)
    assert len(data["rows"]) == N_ROWS and set(data["rows"]) == {data["version"]}
    return data["version"]


def _check_checkpoint(path: Path) -> int:
    tensors, meta = load_checkpoint(path, expect_arch=ARCH)
    assert torch.equal(tensors["w"], FULL[meta["version"] % 2])
    return meta["version"]


def _kill_repeatedly(writer, target: Path, check, kills: int = KILLS, seed: int = 0) -> dict:
    """Start ``writer`` ``kills`` times, SIGKILL it at a random moment after its first complete
    write, and run ``check`` on the target after every kill. Returns what was observed."""
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(seed)
    seen = {"versions": [], "failures": [], "stale_temp_files": 0}
    for _ in range(kills):
        started = ctx.Event()
        proc = ctx.Process(target=writer, args=(str(target), started), daemon=True)
        proc.start()
        try:
            assert started.wait(60), "writer never completed a first write"
            time.sleep(rng.uniform(0.0, 0.2))
        finally:
            proc.kill()
            proc.join()
        assert proc.exitcode == -9
        try:
            seen["versions"].append(check(target))
        except (AtelierInputError, AssertionError, json.JSONDecodeError, KeyError, TypeError) as err:
            seen["failures"].append(f"{type(err).__name__}: {str(err)[:200]}")
        # A kill inside atomic_path leaves its temporary sibling behind (never a torn target).
        seen["stale_temp_files"] = len(list(target.parent.glob(f".{target.name}.*.tmp")))
    return seen


def test_killed_json_writer_leaves_old_or_new_file(tmp_path):
    target = tmp_path / "metrics.json"
    seen = _kill_repeatedly(_json_writer, target, _check_json)
    assert not seen["failures"], seen["failures"]
    assert len(seen["versions"]) == KILLS


def test_killed_streaming_writer_inside_atomic_path_leaves_old_or_new_file(tmp_path):
    target = tmp_path / "table.json"
    seen = _kill_repeatedly(_streaming_json_writer, target, _check_json)
    assert not seen["failures"], seen["failures"]
    # Temporary siblings left behind prove that kills landed mid-write, not between writes.
    assert seen["stale_temp_files"] >= 1


def test_killed_checkpoint_writer_leaves_old_or_new_file(tmp_path):
    target = tmp_path / "model.safetensors"
    seen = _kill_repeatedly(_checkpoint_writer, target, _check_checkpoint)
    assert not seen["failures"], seen["failures"]
    assert len(seen["versions"]) == KILLS and seen["stale_temp_files"] >= 1


def test_control_naive_writer_is_caught_truncated(tmp_path):
    """Without the rename, the same kills leave truncated files: the two tests above can fail."""
    target = tmp_path / "metrics.json"
    seen = _kill_repeatedly(_naive_json_writer, target, _check_json)
    assert seen["failures"], "no kill landed mid-write: the atomicity tests above would prove nothing"
    assert any("not valid JSON" in f for f in seen["failures"])


# -- refusal of bad checkpoints -------------------------------------------------------------------

def _toy_trainer(ckpt: Path, arch=None, total_steps: int = 10) -> ResumableTrainer:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    return ResumableTrainer(model, opt, ckpt, arch or ARCH, seed=0, total_steps=total_steps, ckpt_every=2)


@pytest.fixture
def good_checkpoint(tmp_path) -> Path:
    ckpt = tmp_path / "run.safetensors"
    trainer = _toy_trainer(ckpt)

    def step(n):
        loss = trainer.model(torch.ones(2, 4)).pow(2).mean()
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        return {"loss": loss.item()}

    trainer.total_steps = 4  # a finished 4-step run of a 10-step trainer's architecture
    trainer.run(step, progress=False)
    return ckpt


def _header_len(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _truncate(path: Path, keep) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data), _header_len(path))])


@pytest.mark.parametrize("where, keep", [
    ("empty file", lambda n, h: 0),
    ("inside the length prefix", lambda n, h: 5),
    ("inside the JSON header", lambda n, h: h // 2),
    ("right after the header", lambda n, h: h),
    ("inside the tensor data", lambda n, h: (h + n) // 2),
    ("one byte short", lambda n, h: n - 1),
])
def test_truncated_checkpoint_refused_naming_file(good_checkpoint, where, keep):
    _truncate(good_checkpoint, keep)
    with pytest.raises(AtelierInputError, match=r"run\.safetensors: truncated or corrupt checkpoint"):
        load_checkpoint(good_checkpoint, expect_arch=ARCH)


@pytest.mark.parametrize("offset", [0, 1, 3, 7])
def test_flipped_length_prefix_refused(good_checkpoint, offset):
    data = bytearray(good_checkpoint.read_bytes())
    data[offset] ^= 0x40
    good_checkpoint.write_bytes(bytes(data))
    with pytest.raises(AtelierInputError, match=r"run\.safetensors: truncated or corrupt checkpoint"):
        load_checkpoint(good_checkpoint)


def test_flipped_header_structure_refused(good_checkpoint):
    """Every flip of a JSON structural character of the header ({ } [ ] " : ,) is refused."""
    data = good_checkpoint.read_bytes()
    header = range(8, _header_len(good_checkpoint))
    positions = [i for i in header if chr(data[i]) in '{}[]":,']
    rng = random.Random(0)
    for i in rng.sample(positions, 25):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        good_checkpoint.write_bytes(bytes(flipped))
        with pytest.raises(AtelierInputError, match=r"run\.safetensors: "):
            load_checkpoint(good_checkpoint)


def test_flipped_payload_bit_refused(good_checkpoint):
    data = bytearray(good_checkpoint.read_bytes())
    data[_header_len(good_checkpoint) + 5] ^= 0x10
    good_checkpoint.write_bytes(bytes(data))
    with pytest.raises(AtelierInputError, match=r"run\.safetensors: "):
        load_checkpoint(good_checkpoint)


def test_checkpoint_without_its_checksum_refused_even_with_intact_tensors(tmp_path):
    """Issue 18: removing ``tensors_sha256`` and flipping a payload bit used to load silently."""
    from safetensors.torch import save_file

    path = tmp_path / "stripped.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata={"arch": json.dumps({"name": "toy"})})
    with pytest.raises(AtelierInputError, match=r"stripped\.safetensors: checkpoint has no 'tensors_sha256'"):
        load_checkpoint(path)


@pytest.mark.parametrize("make_trainer, message", [
    (lambda p: _toy_trainer(p, arch={"name": "toy", "dim": 8}), r"run\.safetensors: checkpoint is for architecture"),
    (lambda p: _toy_trainer(p, arch={"name": "other", "dim": 4}), r"run\.safetensors: checkpoint is for architecture"),
    (lambda p: _toy_trainer(p, total_steps=10), r"run\.safetensors: checkpoint of a 4-step run, this run has 10 steps"),
])
def test_mismatched_checkpoint_refused_and_kept(good_checkpoint, make_trainer, message):
    before = good_checkpoint.read_bytes()
    with pytest.raises(AtelierInputError, match=message):
        make_trainer(good_checkpoint).run(lambda n: {}, progress=False)
    assert good_checkpoint.read_bytes() == before  # refusing never overwrites what was there


def test_checkpoint_with_foreign_tensors_refused(tmp_path):
    ckpt = tmp_path / "run.safetensors"
    save_checkpoint(ckpt, {"model.weight": torch.zeros(3, 4), "model.extra": torch.zeros(1)},
                    {"arch": ARCH, "step": 1, "total_steps": 10, "history": [],
                     "optimizer": {"param_groups": [], "scalars": {}}})
    with pytest.raises(AtelierInputError, match=r"run\.safetensors: parameters do not match the model"):
        _toy_trainer(ckpt).try_resume()


@pytest.mark.parametrize("meta", [
    {"total_steps": 10},                                                      # an exported model: no training state
    {"total_steps": "ten", "step": 2, "history": []},                        # malformed field
    {"total_steps": 10, "step": 2, "history": [], "optimizer": {"param_groups": [], "scalars": {}}},  # other optimizer
])
def test_checkpoint_without_matching_training_state_refused(tmp_path, meta):
    ckpt = tmp_path / "run.safetensors"
    trainer = _toy_trainer(ckpt)
    save_checkpoint(ckpt, {f"model.{k}": v for k, v in trainer.model.state_dict().items()}, {"arch": ARCH, **meta})
    with pytest.raises(AtelierInputError, match=r"run\.safetensors: "):
        trainer.try_resume()


def test_non_checkpoint_files_refused_naming_file(tmp_path):
    (tmp_path / "notes.safetensors").write_text(json.dumps({"arch": ARCH}))
    with pytest.raises(AtelierInputError, match=r"notes\.safetensors: truncated or corrupt checkpoint"):
        load_checkpoint(tmp_path / "notes.safetensors")
    with pytest.raises(AtelierInputError, match=r"absent\.safetensors: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.safetensors")


# -- every writer in lib/ goes through the atomic helpers -------------------------------------------

#: calls that write a file named by one of their arguments (or, for write_text/write_bytes, by their receiver)
WRITE_CALLS = {"write_text", "write_bytes", "savefig", "save", "savez", "savez_compressed", "save_file",
               "to_csv", "to_json", "to_parquet", "imwrite", "copyfile", "copy", "copy2"}
#: with-blocks inside which writing is fine: the atomic helper, and scratch space that is deleted
SAFE_BLOCKS = {"atomic_path", "TemporaryDirectory", "NamedTemporaryFile", "mkdtemp"}


def _callee(call: ast.Call) -> str:
    return getattr(call.func, "attr", getattr(call.func, "id", ""))


def _non_atomic_writes(path: Path) -> list[str]:
    """File writes outside a ``with atomic_path(...)`` (or scratch-directory) block. A heuristic:
    calls without any argument (``trainer.save()``, ``df.to_csv(index=False)`` returning text) and
    writes into in-memory buffers (target argument named ``buf``/``BytesIO``) are not file writes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(repo_root())
    found: list[str] = []

    def visit(node, safe: bool) -> None:
        if isinstance(node, ast.With):
            safe = safe or any(isinstance(item.context_expr, ast.Call) and _callee(item.context_expr) in SAFE_BLOCKS
                               for item in node.items)
        if isinstance(node, ast.Call) and not safe:
            name = _callee(node)
            # the target is the first argument of most writers, the second of torch.save(obj, f)
            targets = [ast.unparse(a).lower() for a in node.args[:2]] + [ast.unparse(k.value).lower() for k in node.keywords
                                                                          if k.arg == "f"]
            in_memory = any("buf" in t or "bytesio" in t for t in targets)
            if name in WRITE_CALLS and node.args and not in_memory:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:100]}")
            if name == "open" and len(node.args) > 1 and any(m in ast.unparse(node.args[1]) for m in "wax"):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:100]}")
        for child in ast.iter_child_nodes(node):
            visit(child, safe)

    visit(tree, False)
    return found


def test_lib_writes_files_only_through_atomic_helpers():
    offenders = [hit for path in sorted((repo_root() / "lib").rglob("*.py")) for hit in _non_atomic_writes(path)]
    assert not offenders, "files written without atomic_path / atomic_write_*:\n" + "\n".join(offenders)


def test_the_atomic_write_check_catches_a_plain_write(tmp_path, monkeypatch):
    """The scan above is not vacuous."""
    monkeypatch.setattr("tests.test_reliability_atomic.repo_root", lambda: tmp_path)
    (tmp_path / "bad.py").write_text("def f(p, fig):\n    p.write_text('x')\n    fig.savefig(p)\n"
                                     "    with atomic_path(p) as tmp:\n        tmp.write_text('ok')\n")
    assert [hit.split(":")[1] for hit in _non_atomic_writes(tmp_path / "bad.py")] == ["2", "3"]
