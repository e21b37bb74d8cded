"""Trained tokenizers from the stages' artifacts, and the uint8 image <-> token grid round trip every
consumer uses (training reads the ``tokens@<name>`` cache instead)."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from lib.config.tokenizers import require_known as require_tokenizer
from lib.images import to_float
from lib.io import AtelierInputError
from lib.models.tokenizer import load_tokenizer, muse_finetune_config
from lib.store import tokenizers as tokenizer_paths

ARCH_KEYS = ("image_size", "ch", "ch_mult", "num_res_blocks", "z_dim")


def tokenizer_config(section: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The :class:`~lib.models.tokenizer.Tokenizer` config of ``name`` (shared architecture merged in,
    shared codebook options under the config's own ``quantizer_kwargs``).

    For a fine-tune this is the base's config with the wider/deeper decoder
    (:func:`lib.models.tokenizer.muse_finetune_config`), named after the fine-tune.
    """
    require_tokenizer(section, name)
    if name in section["finetunes"]:
        ft = section["finetunes"][name]
        cfg = muse_finetune_config(tokenizer_config(section, ft["base"]), ft["width_mult"], ft["depth_mult"])
        cfg["name"] = name
        return cfg
    entry = copy.deepcopy(section["configs"][name])
    cfg = {key: copy.deepcopy(section[key]) for key in ARCH_KEYS}
    cfg.update(
        name=name,
        quantizer=entry["quantizer"],
        quantizer_kwargs={**copy.deepcopy(section.get("codebook") or {}), **entry["quantizer_kwargs"]},
        decoder=entry["decoder"],
        decoder_kwargs=entry.get("decoder_kwargs", {}) or {},
    )
    return cfg


def load_named_tokenizer(params: Mapping[str, Any], name: str, device: str = "cpu"):
    """A trained tokenizer of ``tokenizers.configs`` / ``tokenizers.finetunes`` by name."""
    S = params["tokenizers"]
    path = tokenizer_paths.checkpoint_path(name)
    if not path.is_file():
        raise AtelierInputError(f"{path}: tokenizer {name!r} is not trained in this profile "
                                f"(profiles.{params['profile']}.tokenizers.steps.{name} = {S['steps'].get(name)})")
    return load_tokenizer(path, tokenizer_config(S, name), disc_ndf=S["disc_ndf"], device=device)


@torch.no_grad()
def decode_tokens(tok, tokens: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``[n, N, C]`` tokens -> float images ``[n,3,H,W]`` in [-1, 1]."""
    h, w, c = tok.token_shape
    out = []
    for i in range(0, len(tokens), batch_size):
        t = tokens[i:i + batch_size]
        out.append(tok.decode_indices(t.reshape(len(t), h, w, c).to(next(tok.parameters()).device)).cpu())
    return torch.cat(out)


def tokenize_images(tok, images_u8: np.ndarray, batch_size: int = 500, progress: bool = False, desc: str = "tokenize"):
    """uint8 ``[n,H,W,3]`` -> ``LongTensor [n, N, C]`` (raster order) with ``tok``."""
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images_u8), batch_size), desc=desc, disable=not progress, mininterval=5):
            grid = tok.tokenize(to_float(images_u8[i:i + batch_size]))  # [b, H, W, C]
            out.append(grid.reshape(grid.shape[0], -1, grid.shape[-1]).cpu())
    return torch.cat(out) if out else torch.zeros(0, 1, 1, dtype=torch.long)
