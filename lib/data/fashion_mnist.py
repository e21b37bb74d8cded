"""Real Fashion-MNIST (Xiao et al., 2017; Zalando, MIT licence).

Sources, in order of preference:

1. the Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), whose
   gzip files land in ``/usr/share/datasets/fashion-mnist/``;
2. torchvision's downloader, for users with internet access.

Debian re-compressed the files, so the ``.gz`` checksums differ from upstream; what we verify is the
sha256 of the *decompressed* idx files, which is identical whichever source they came from.
"""

from __future__ import annotations

import argparse
import gzip
import math
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from lib.io import AtelierInputError, atomic_path, sha256_file

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

#: sha256 of the decompressed idx files (identical for the Debian package and Zalando's release).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

#: Fashion-MNIST's ten classes, in label order.
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

HOW_TO_GET = (
    "install it with 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu) and run "
    "'reproduce/run', or run 'python -m lib.data.fashion_mnist fetch DEST' with internet access"
)


def _idx_name(split: str, kind: str) -> str:
    if split not in ("train", "test"):
        raise AtelierInputError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte" if kind == "images" else f"{prefix}-labels-idx1-ubyte"


def fetch(dest: str | Path, source: str | Path | None = None) -> Path:
    """Put the four decompressed, checksum-verified idx files into ``dest``.

    ``source`` is a folder of ``*.gz`` or decompressed idx files (default: the Debian package's);
    when it holds none, torchvision downloads them (needs internet). Files already present and
    valid are kept; each file is written atomically.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    source = Path(source) if source else DEBIAN_DIR
    for name, digest in SHA256.items():
        target = dest / name
        if target.is_file() and sha256_file(target) == digest:
            continue
        candidates = [source / name, source / f"{name}.gz"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            found = _download_with_torchvision(name)
        with atomic_path(target) as tmp:
            opener = gzip.open if found.suffix == ".gz" else open
            try:
                with opener(found, "rb") as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut file, EOFError
                raise AtelierInputError(f"{found}: cannot be read as {'gzip' if found.suffix == '.gz' else 'a file'} "
                                        f"({type(err).__name__}: {err}); the file is corrupt ({HOW_TO_GET})") from None
            if sha256_file(tmp) != digest:
                raise AtelierInputError(
                    f"{found}: decompressed content does not match Fashion-MNIST's checksum for {name}; "
                    f"the file is corrupt or not Fashion-MNIST ({HOW_TO_GET})"
                )
    return dest


def _download_with_torchvision(name: str) -> Path:
    from torchvision.datasets import FashionMNIST

    tmp = Path(tempfile.mkdtemp(prefix="fmnist-"))
    try:
        FashionMNIST(root=str(tmp), train=True, download=True)
        FashionMNIST(root=str(tmp), train=False, download=True)
    except Exception as err:  # the downloader raises many kinds (URLError, RuntimeError, ...)
        raise AtelierInputError(
            f"Fashion-MNIST file {name} is not in {DEBIAN_DIR} and downloading failed ({err}); {HOW_TO_GET}"
        ) from None
    return tmp / "FashionMNIST" / "raw" / name


def verify(root: str | Path) -> None:
    """Check that ``root`` holds the four idx files with the right checksums; errors name the file."""
    root = Path(root)
    for name, digest in SHA256.items():
        path = root / name
        if not path.is_file():
            raise AtelierInputError(f"{path}: Fashion-MNIST file missing; {HOW_TO_GET}")
        if sha256_file(path) != digest:
            raise AtelierInputError(f"{path}: checksum mismatch (corrupt or truncated); delete it and {HOW_TO_GET}")


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (LeCun's format: magic, dims, big-endian uint32 sizes, uint8 payload)."""
    path = Path(path)
    if not path.is_file():
        raise AtelierInputError(f"{path}: file not found; {HOW_TO_GET}")
    raw = path.read_bytes()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise AtelierInputError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise AtelierInputError(f"{path}: idx header truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)  # exact: np.prod would wrap around on a corrupt header's huge sizes
    if len(raw) - header != expected:
        raise AtelierInputError(
            f"{path}: idx payload has {len(raw) - header} bytes, header promises {expected} (truncated?)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load(root: str | Path, split: str, verify_checksums: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` int64 of the ``train`` or ``test`` split."""
    root = Path(root)
    img_name, lab_name = _idx_name(split, "images"), _idx_name(split, "labels")
    if verify_checksums:
        for name in (img_name, lab_name):
            path = root / name
            if not path.is_file():
                raise AtelierInputError(f"{path}: Fashion-MNIST file missing; {HOW_TO_GET}")
            if sha256_file(path) != SHA256[name]:
                raise AtelierInputError(f"{path}: checksum mismatch (corrupt or truncated); delete it and {HOW_TO_GET}")
    images = read_idx(root / img_name)
    labels = read_idx(root / lab_name).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise AtelierInputError(f"{root / img_name}: expected [N, 28, 28] images, got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise AtelierInputError(f"{root / lab_name}: {labels.shape[0]} labels for {images.shape[0]} images")
    return images, labels


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Obtain and verify real Fashion-MNIST.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="decompress + verify into DEST (from the Debian package or the web)")
    p_fetch.add_argument("dest")
    p_fetch.add_argument("--source", default=None)
    p_verify = sub.add_parser("verify", help="check checksums of the files in ROOT")
    p_verify.add_argument("root")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(f"Fashion-MNIST ready in {fetch(args.dest, args.source)}")
        else:
            verify(args.root)
            print(f"{args.root}: all four Fashion-MNIST files verified")
    except AtelierInputError as err:
        raise SystemExit(f"error: {err}")


if __name__ == "__main__":
    _main()
