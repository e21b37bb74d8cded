"""Trained generators from the stages' artifacts, with what they read: captions and text features.

What the notebooks, :mod:`lib.pipelines.garment` and the stage drivers load; no training here.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lib.config.generation import require_known as require_generator, steps_of
from lib.data.attributes import CATEGORY_NAMES
from lib.generation import (
    ARTransformer,
    MaskedTokenTransformer,
    TextFeatureTable,
    TransformerConfig,
    class_text_table,
    load_generator,
)
from lib.io import AtelierInputError, read_json
from lib.pipelines.tokenizers import load_named_tokenizer
from lib.store import caption_root, generators as generator_paths
from lib.text.cache import caption_index


def load_captions() -> dict[str, list[list[str]]]:
    path = caption_root() / "captions.json"
    if not path.is_file():
        raise AtelierInputError(f"{path}: missing; run the data stage first (dvc repro data)")
    return read_json(path)


def text_table(progress: bool = False):
    """Token-level MiniLM features of every distinct caption and the per-split caption ids.

    Returns ``(table, ids)``: a :class:`lib.generation.TextFeatureTable` over the sorted distinct
    captions of all splits, and ``{split: LongTensor [N, captions_per_image]}`` into it. Built once
    by the ``text_features`` stage; later calls read its cache.
    """
    texts, ids = caption_index(load_captions())
    table = TextFeatureTable.build(texts, generator_paths.text_table_path(), progress=progress)
    return table, {s: torch.from_numpy(v) for s, v in ids.items()}


def class_table(progress: bool = False):
    """Captions that name only the category ("a dress"): the class-conditional setting (MoVQ Table 3)."""
    return class_text_table(CATEGORY_NAMES, generator_paths.class_table_path(), template=generator_paths.CLASS_TEMPLATE, progress=progress)


def transformer_config(params: Mapping[str, Any], name: str, tok) -> "Any":
    G = params["generation"]
    require_generator(G, name)
    entry = G["models"][name]
    h, w, c = tok.token_shape
    return TransformerConfig(
        grid_h=int(h), grid_w=int(w), channels=int(c), codebook_size=int(tok.vocab_size),
        dim=G["dim"], depth=G["depth"], heads=G["heads"], mlp_ratio=float(G["mlp_ratio"]),
        text_mode=entry["text_mode"], max_visual_tokens=int(entry.get("max_visual_tokens", 0)),
    )


def build_model(params: Mapping[str, Any], name: str, tok):
    cfg = transformer_config(params, name, tok)
    kind = params["generation"]["models"][name]["kind"]
    return (MaskedTokenTransformer if kind == "masked" else ARTransformer)(cfg)


def load_trained(params: Mapping[str, Any], name: str, device: str = "cpu"):
    """``(model, tokenizer, decoder_tokenizer)`` of a trained generator (eval mode).

    ``decoder_tokenizer`` is the ``decode_with`` fine-tune when the model names one (same tokens,
    better pixels: Muse Sec. 2.5), else the tokenizer itself.
    """
    G = params["generation"]
    require_generator(G, name)
    path = generator_paths.checkpoint_path(name)
    if not path.is_file():
        raise AtelierInputError(f"{path}: generator {name!r} is not trained in this profile "
                                f"(profiles.{params['profile']}.generation.steps.{name} = {steps_of(G, name)})")
    entry = G["models"][name]
    tok = load_named_tokenizer(params, entry["tokenizer"], device)
    dec_name = entry.get("decode_with")
    dec = tok
    if dec_name and (params["tokenizers"]["steps"].get(dec_name, 0) > 0):
        dec = load_named_tokenizer(params, dec_name, device)
    model, _ = load_generator(path, device)
    return model, tok, dec


def is_trained(params: Mapping[str, Any], name: str) -> bool:
    """Whether the profile trains generator ``name`` and its checkpoint is there (a stage has run)."""
    return steps_of(params["generation"], name) > 0 and generator_paths.checkpoint_path(name).is_file()


def trained_generators(params: Mapping[str, Any]) -> list[str]:
    """The ``generation.models`` entries :func:`is_trained`, in params order."""
    return [n for n in params["generation"]["models"] if is_trained(params, n)]
