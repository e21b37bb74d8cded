"""Atomic outputs and strict inputs.

Every file a stage writes goes to a temporary sibling first and is then renamed over the target
(``os.replace`` is atomic on POSIX), so a process killed at any moment leaves either the old file
or the new one, never a truncated one. Checkpoints are safetensors with a JSON metadata header that
records the architecture, so a checkpoint of another model is refused with a message naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping


class AtelierInputError(ValueError):
    """Bad input: the message names the file, field or parameter and what is wrong with it."""


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it over ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched. ``fsync=False``
    skips flushing to disk (the rename stays atomic for other processes); bulk writers of many small
    files inside one stage output use it, since DVC re-runs an unfinished stage anyway.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should be readable like any file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (stable diffs in git), atomically."""
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`AtelierInputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise AtelierInputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    # ValueError covers JSONDecodeError, UnicodeDecodeError and integers longer than Python's
    # int-string limit; RecursionError is what deeply nested arrays raise.
    except (ValueError, RecursionError) as err:
        raise AtelierInputError(f"{path}: not valid JSON ({str(err)[:200]})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Save ``tensors`` (name -> torch.Tensor) as safetensors with ``meta`` in its header, atomically.

    ``meta`` must contain ``"arch"``: a JSON-able description of the architecture (name and
    hyper-parameters) that :func:`load_checkpoint` compares against what the caller expects.
    """
    # lib.io stays torch-free for lib.config (issue 16): torch only where tensors are written
    from safetensors.torch import save_file

    if "arch" not in meta:
        raise AtelierInputError("checkpoint meta must contain 'arch'")
    if CHECKSUM_KEY in meta:
        raise AtelierInputError(f"checkpoint meta key {CHECKSUM_KEY!r} is reserved")
    header = {key: json.dumps(value, sort_keys=True, default=_jsonable) for key, value in meta.items()}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    header[CHECKSUM_KEY] = json.dumps(_tensors_digest(contiguous))  # every header value is JSON
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=header)
        _sort_metadata(tmp)
    return Path(path)


#: metadata key holding the sha256 of every tensor's name, dtype, shape and bytes
CHECKSUM_KEY = "tensors_sha256"


def _tensors_digest(tensors: Mapping[str, Any]) -> str:
    """sha256 over the tensors in name order, so a flipped payload bit is caught on load."""
    # lib.io / lib.provenance stay torch-free for lib.config (issue 16)
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sort_metadata(path: Path) -> None:
    """Rewrite the safetensors header with its metadata in sorted key order: safetensors writes it
    from a Rust HashMap, in a random order per save, so equal checkpoints were different files."""
    with open(path, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (n - len(text))  # same length: same keys and values, reordered
        if len(text) != n:  # serde_json escaped something differently: keep the file as written
            return
        fh.seek(8)
        fh.write(text)


def load_checkpoint(path: str | os.PathLike, expect_arch: Mapping[str, Any] | None = None, device: str = "cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(tensors, meta)``.

    Raises :class:`AtelierInputError` naming the file when it is missing, truncated/corrupt, or was
    written for another architecture than ``expect_arch``.
    """
    # torch-free lib.io, as above
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AtelierInputError(f"{path}: checkpoint not found")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device=device) as fh:
            raw_meta = fh.metadata() or {}
            for name in fh.keys():
                tensors[name] = fh.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AtelierInputError(f"{path}: truncated or corrupt checkpoint ({err})") from None
    expected = raw_meta.pop(CHECKSUM_KEY, None)
    meta = {}
    for key, value in raw_meta.items():
        try:
            meta[key] = json.loads(value)
        except (ValueError, RecursionError):
            raise AtelierInputError(f"{path}: checkpoint metadata field '{key}' is not JSON") from None
    # required, not optional: with the key removed, a flipped payload bit used to load (and resume) silently
    if expected is None:
        raise AtelierInputError(f"{path}: checkpoint has no '{CHECKSUM_KEY}' (not written by lib.io.save_checkpoint, "
                                f"or stripped); its tensors cannot be verified: retrain or re-save it")
    if json.dumps(_tensors_digest(tensors)) != expected:
        raise AtelierInputError(f"{path}: corrupt checkpoint (tensor data does not match its sha256; bit rot or a "
                                f"partial overwrite)")
    if expect_arch is not None:
        found = meta.get("arch")
        if found != json.loads(json.dumps(dict(expect_arch), sort_keys=True, default=_jsonable)):
            raise AtelierInputError(
                f"{path}: checkpoint is for architecture {found}, expected {dict(expect_arch)}"
            )
    return tensors, meta


def checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a :func:`save_checkpoint` file (``arch``, ``step``, ...), read from its
    header alone (the tensors are neither read nor verified: :func:`load_checkpoint` does that)."""
    # torch-free lib.io, as above
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AtelierInputError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AtelierInputError(f"{path}: truncated or corrupt checkpoint ({err})") from None
    try:
        return {k: json.loads(v) for k, v in raw.items() if k != CHECKSUM_KEY}
    except (ValueError, RecursionError):
        raise AtelierInputError(f"{path}: checkpoint metadata is not JSON") from None


def load_model_state(model: Any, tensors: Mapping[str, Any], path: str | os.PathLike, what: str = "the model",
                     prefix: str = "model.") -> Any:
    """Load the ``prefix``-ed tensors of a :func:`load_checkpoint` result into ``model``, exactly.

    Every checkpoint stores its module's state under ``model.`` (beside optimizer state); a name
    missing on either side is refused with an error naming the file and the first names, instead of
    ``strict=True``'s multi-line traceback. Returns ``model``.
    """
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AtelierInputError(f"{path}: parameters do not match {what} (missing {list(missing)[:3]}, "
                                f"unexpected {list(unexpected)[:3]})")
    return model
