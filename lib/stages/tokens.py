"""Token caches: every split of the caption dataset tokenized ONCE per tokenizer (DVC stage ``tokens@<name>``).

Stage two of every paper here (M6-Fashion Sec. 3.3, MoVQ Sec. 3.2, Muse Sec. 2.2) trains on the
frozen stage-one tokens of the training images. Before this stage existed each generator re-ran its
tokenizer over the 55k training images (80-450 s per generator, issue 15); now the ``tokens@<name>``
stage writes ``artifacts/tokens/<name>/tokens.safetensors`` and every generator of that tokenizer
reads it (:func:`load`) without running any tokenizer code.

The file holds ``train`` / ``val`` / ``test`` as ``int32 [n, N, C]`` (raster order of the
``H x W`` grid, ``C`` token channels) and metadata: the grid shape, the vocabulary size, the sha256
of the tokenizer checkpoint it came from (checked on load, so a cache of an older tokenizer is
refused rather than silently used) and of the split files.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import lib.config as lib_params
import lib.config.tokenizers as tokenizer_cfg
import lib.pipelines.tokenizers as tokenizer_pipe
import lib.store.tokenizers as tokenizer_store
from lib.config.tokenizers import require_known as require_tokenizer
from lib.data.caption_dataset import load_split
from lib.io import AtelierInputError, atomic_write_json, load_checkpoint, save_checkpoint, sha256_file
from lib.models.tokenizer import load_tokenizer
from lib.pipelines.tokenizers import tokenize_images
from lib.store import caption_root, out_root

FILE = "tokens.safetensors"
SKIPPED_MARKER = "skipped.json"
SPLITS = ("train", "val", "test")
FORMAT = "atelier-tokens-v1"


def cache_path(name: str) -> Path:
    return out_root() / "artifacts" / "tokens" / name / FILE


@dataclass(frozen=True)
class TokenSet:
    """The cached tokens of one tokenizer: what a generator needs instead of the tokenizer itself."""

    name: str
    splits: dict  # split -> LongTensor [n, N, C]
    token_shape: tuple[int, int, int]
    vocab_size: int
    tokenizer_sha256: str
    path: Path

    def __getitem__(self, split: str):
        if split not in self.splits:
            raise AtelierInputError(f"{self.path}: no split {split!r} (has {sorted(self.splits)})")
        return self.splits[split]


def build(params: dict, name: str, progress: bool = True) -> Path:
    """Tokenize every split with the trained tokenizer ``name`` and write the cache atomically."""
    S = params["tokenizers"]
    ckpt = tokenizer_store.checkpoint_path(name)
    if not ckpt.is_file():
        raise AtelierInputError(f"{ckpt}: tokenizer {name!r} is not trained in this profile "
                                f"(profiles.{params['profile']}.tokenizers.steps.{name} = {S['steps'].get(name)})")
    tok = load_tokenizer(ckpt, tokenizer_pipe.tokenizer_config(S, name), disc_ndf=S["disc_ndf"])
    return write(tok, name, sha256_file(ckpt), progress=progress)


def write(tok, name: str, tokenizer_sha256: str, progress: bool = False) -> Path:
    """Tokenize every split of the caption dataset with ``tok`` (anything with ``tokenize``,
    ``token_shape`` and ``vocab_size``) and write the cache of tokenizer ``name`` atomically;
    ``tokenizer_sha256`` is what :func:`load` later checks the tokenizer's checkpoint against."""
    tensors, counts, sources = {}, {}, {}
    for split in SPLITS:
        path = caption_root() / f"{split}.npz"
        images = load_split(caption_root(), split)["images"]
        # int32 halves the file; every codebook here has < 2^31 entries.
        tensors[split] = tokenize_images(tok, images, progress=progress, desc=f"tokens {name}/{split}").to(torch.int32)
        counts[split], sources[split] = int(len(images)), sha256_file(path)
    h, w, c = (int(v) for v in tok.token_shape)
    meta = {"arch": {"format": FORMAT, "token_shape": [h, w, c], "vocab_size": int(tok.vocab_size)},
            "tokenizer": name, "tokenizer_sha256": tokenizer_sha256, "split_sha256": sources, "counts": counts}
    return save_checkpoint(cache_path(name), tensors, meta)


def load(name: str, tokenizer_checkpoint: Path | None = None) -> TokenSet:
    """The token cache of tokenizer ``name`` (LongTensors). When ``tokenizer_checkpoint`` exists it
    must be the checkpoint the cache was built from, else the cache is refused (run its stage again)."""
    path = cache_path(name)
    if not path.is_file():
        marker = path.parent / SKIPPED_MARKER
        why = " (its stage was skipped in this profile)" if marker.is_file() else ""
        raise AtelierInputError(f"{path}: no token cache for tokenizer {name!r}{why}; run `dvc repro tokens@{name}` "
                                f"(python -m lib.stages.tokens build --profile P --name {name})")
    tensors, meta = load_checkpoint(path)
    arch = meta.get("arch") or {}
    if arch.get("format") != FORMAT or any(s not in tensors for s in SPLITS):
        raise AtelierInputError(f"{path}: not an Atelier token cache (format {arch.get('format')!r}, "
                                f"splits {sorted(tensors)})")
    if tokenizer_checkpoint is not None and Path(tokenizer_checkpoint).is_file():
        found = sha256_file(tokenizer_checkpoint)
        if found != meta.get("tokenizer_sha256"):
            raise AtelierInputError(f"{path}: built from another checkpoint of tokenizer {name!r} "
                                    f"({str(meta.get('tokenizer_sha256'))[:12]}, now {found[:12]}); "
                                    f"run `dvc repro tokens@{name}` again")
    return TokenSet(name=name, splits={s: tensors[s].long() for s in SPLITS},
                    token_shape=tuple(int(v) for v in arch["token_shape"]), vocab_size=int(arch["vocab_size"]),
                    tokenizer_sha256=str(meta.get("tokenizer_sha256")), path=path)


def write_skipped(profile: str, name: str) -> Path:
    reason = f"tokenizer {name!r} is not trained in profile {profile!r} (profiles.{profile}.tokenizers.steps.{name} = 0)"
    return atomic_write_json(cache_path(name).parent / SKIPPED_MARKER, {"skipped": True, "tokenizer": name, "reason": reason})


def run_build(profile: str, names: list[str], skip_only: bool = False) -> int:
    P = lib_params.load(profile)
    for name in names:
        require_tokenizer(P["tokenizers"], name)
        if not tokenizer_cfg.is_active(P["tokenizers"], name):
            print(f"[tokens {name}] skipped in profile {profile}: wrote {write_skipped(profile, name)}")
            continue
        if skip_only:
            raise AtelierInputError(f"tokenizer {name!r} is trained in profile {profile!r}: run "
                                    "`python -m lib.stages.tokens build` for it, not `skip`")
        t0 = time.perf_counter()
        path = build(P, name)
        print(f"[tokens {name}] {time.perf_counter() - t0:.0f} s -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.stages.tokens", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd, helptext in (("build", "tokenize every split with one trained tokenizer (or write its 'skipped' marker)"),
                          ("skip", "write the 'skipped' markers of names the profile does not train")):
        p = sub.add_parser(cmd, help=helptext)
        p.add_argument("--profile", required=True)
        p.add_argument("--name", required=True, nargs="+")
    args = parser.parse_args(argv)
    try:
        return run_build(args.profile, args.name, skip_only=args.command == "skip")
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
