"""Named stage-two generators: configurations from ``params.yaml``, token caches, the DVC stage driver.

``params.yaml`` describes every generator as data (validated by :mod:`lib.params`):

- ``generation.<key>``: what every generator shares -- transformer width/depth/heads, training
  (batch size, learning rate, warm-up, label smoothing, condition drop) and sampling defaults;
- ``generation.models``: name -> ``{kind, tokenizer, decode_with, text_mode, objective,
  max_visual_tokens}``: ``kind`` ``masked`` (:class:`lib.generation.MaskedTokenTransformer`) or
  ``autoregressive`` (:class:`lib.generation.ARTransformer`), trained on the tokens of the named
  tokenizer (``tokenizers.configs``); ``decode_with`` optionally names a decoder fine-tune of that
  tokenizer (Muse Sec. 2.5) used to turn sampled tokens into pixels;
- ``profiles.<p>.generation``: ``steps`` (name -> training steps; **0 = not run**) and the
  evaluation sample counts.

Stages: ``text_features`` (token-level frozen MiniLM features of every caption, once) and one
``generator@<name>`` per model (``python -m lib.generators train --profile P --name NAME``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .io import AtelierInputError, atomic_write_json
from .paths import out_root

STAGE = "03_generators"
CHECKPOINT = "model.safetensors"
KINDS = ("masked", "autoregressive")
OBJECTIVES = ("muse", "m6", "class")
ARCH_KEYS = ("dim", "depth", "heads", "mlp_ratio")


# ---------------------------------------------------------------------------------------------
# Configurations and paths
# ---------------------------------------------------------------------------------------------
def _known(section: Mapping[str, Any], name: str) -> None:
    if name not in section["models"]:
        raise AtelierInputError(f"params.yaml: no generator named {name!r} in generation.models "
                                f"(known: {', '.join(section['models'])})")


def steps_of(section: Mapping[str, Any], name: str) -> int:
    _known(section, name)
    return int(section["steps"].get(name, 0))


def is_active(section: Mapping[str, Any], name: str) -> bool:
    return steps_of(section, name) > 0


def seed_of(params: Mapping[str, Any], name: str) -> int:
    """The training seed of ``name``: its own ``seed`` if it is a seed replica, else the top-level one."""
    _known(params["generation"], name)
    return int(params["generation"]["models"][name].get("seed", params["seed"]))


def seed_runs(params: Mapping[str, Any], name: str) -> dict[int, str]:
    """``{seed: entry name}`` of ``name`` and every seed replica of it (issue 17), original first."""
    models = params["generation"]["models"]
    _known(params["generation"], name)
    runs = {seed_of(params, name): name}
    runs.update({seed_of(params, n): n for n, m in models.items() if m.get("replicates") == name})
    return runs


def checkpoint_path(name: str) -> Path:
    return out_root() / "artifacts" / "generators" / name / CHECKPOINT


def metrics_path(name: str) -> Path:
    return out_root() / "results" / STAGE / name / "metrics.json"


def loss_path(name: str) -> Path:
    return out_root() / "results" / STAGE / name / "loss.json"


def text_table_path() -> Path:
    return out_root() / "artifacts" / "text" / "minilm_tokens.safetensors"


def class_table_path() -> Path:
    return out_root() / "artifacts" / "text" / "minilm_class_tokens.safetensors"


CLASS_TEMPLATE = "a {}"


# ---------------------------------------------------------------------------------------------
# Data: captions, text features, tokens
# ---------------------------------------------------------------------------------------------
def caption_root() -> Path:
    from .paths import artifacts_dir

    return artifacts_dir("data") / "captions"


def load_captions() -> dict[str, list[list[str]]]:
    from .io import read_json

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
    from .generation import TextFeatureTable
    from .text.cache import caption_index

    texts, ids = caption_index(load_captions())
    table = TextFeatureTable.build(texts, text_table_path(), progress=progress)
    return table, {s: torch.from_numpy(v) for s, v in ids.items()}


def class_table(progress: bool = False):
    """Captions that name only the category ("a dress"): the class-conditional setting (MoVQ Table 3)."""
    from .data.attributes import CATEGORY_NAMES
    from .generation import class_text_table

    return class_text_table(CATEGORY_NAMES, class_table_path(), template="a {}", progress=progress)


def load_named_tokenizer(params: Mapping[str, Any], name: str, device: str = "cpu"):
    """A trained tokenizer of ``tokenizers.configs`` / ``tokenizers.finetunes`` by name."""
    from . import tokenizers as T
    from .models.tokenizer import load_tokenizer

    S = params["tokenizers"]
    path = T.checkpoint_path(name)
    if not path.is_file():
        raise AtelierInputError(f"{path}: tokenizer {name!r} is not trained in this profile "
                                f"(profiles.{params['profile']}.tokenizers.steps.{name} = {S['steps'].get(name)})")
    return load_tokenizer(path, T.tokenizer_config(S, name), disc_ndf=S["disc_ndf"], device=device)


def tokenize_images(tok, images_u8: np.ndarray, batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """uint8 ``[n,H,W,3]`` -> ``LongTensor [n, N, C]`` with ``tok`` (:func:`lib.tokens.tokenize_images`).

    For notebooks that tokenize a few chosen images; training reads the ``tokens@<name>`` cache."""
    from .tokens import tokenize_images as _tokenize

    return _tokenize(tok, images_u8, batch_size=batch_size, progress=progress)


@torch.no_grad()
def decode_tokens(tok, tokens: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``[n, N, C]`` tokens -> float images ``[n,3,H,W]`` in [-1, 1]."""
    h, w, c = tok.token_shape
    out = []
    for i in range(0, len(tokens), batch_size):
        t = tokens[i:i + batch_size]
        out.append(tok.decode_indices(t.reshape(len(t), h, w, c).to(next(tok.parameters()).device)).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def transformer_config(params: Mapping[str, Any], name: str, tok) -> "Any":
    from .generation import TransformerConfig

    G = params["generation"]
    _known(G, name)
    entry = G["models"][name]
    h, w, c = tok.token_shape
    return TransformerConfig(
        grid_h=int(h), grid_w=int(w), channels=int(c), codebook_size=int(tok.vocab_size),
        dim=G["dim"], depth=G["depth"], heads=G["heads"], mlp_ratio=float(G["mlp_ratio"]),
        text_mode=entry["text_mode"], max_visual_tokens=int(entry.get("max_visual_tokens", 0)),
    )


def build_model(params: Mapping[str, Any], name: str, tok):
    from .generation import ARTransformer, MaskedTokenTransformer

    cfg = transformer_config(params, name, tok)
    kind = params["generation"]["models"][name]["kind"]
    return (MaskedTokenTransformer if kind == "masked" else ARTransformer)(cfg)


def load_trained(params: Mapping[str, Any], name: str, device: str = "cpu"):
    """``(model, tokenizer, decoder_tokenizer)`` of a trained generator (eval mode).

    ``decoder_tokenizer`` is the ``decode_with`` fine-tune when the model names one (same tokens,
    better pixels: Muse Sec. 2.5), else the tokenizer itself.
    """
    from .generation import load_generator

    G = params["generation"]
    _known(G, name)
    path = checkpoint_path(name)
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


# ---------------------------------------------------------------------------------------------
# The training stage
# ---------------------------------------------------------------------------------------------
def write_skipped(profile: str, name: str, seed: int) -> list[Path]:
    from .provenance import run_info, write_metrics

    reason = f"not trained in profile {profile!r} (profiles.{profile}.generation.steps.{name} = 0)"
    ckpt_dir = checkpoint_path(name).parent
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ckpt_dir / "skipped.json", {"skipped": True, "reason": reason})
    atomic_write_json(loss_path(name), [])
    return [ckpt_dir / "skipped.json", loss_path(name),
            write_metrics(metrics_path(name), {"skipped": True, "reason": reason}, run_info(profile, seed, model=name))]


def condition_mixture(entry: Mapping[str, Any]) -> tuple[float, ...]:
    """The {v,t}, {v}, {t}, {} probabilities an m6 entry's ``condition_mixture`` names (M6-Fashion Sec. 3.3)."""
    from .generation.masking import COMBINATION_READINGS
    return COMBINATION_READINGS[entry["condition_mixture"]]


@torch.no_grad()
def heldout_accuracy(model, tokens: torch.Tensor, cond, rate: float = 0.5, seed: int = 0,
                     batch_size: int = 256) -> float:
    """Masked-token accuracy of a masked model on held-out token grids at a fixed mask rate
    (next-entry accuracy for the autoregressive baseline): a training-independent quality check."""
    from .generation import ARTransformer, masked_token_accuracy

    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    correct = total = 0.0
    for i in range(0, len(tokens), batch_size):
        t = tokens[i:i + batch_size]
        c = cond.select(slice(i, i + len(t))) if cond is not None else None
        if isinstance(model, ARTransformer):
            logits = model(t, c)
            correct += float((logits.argmax(-1) == t).float().sum())
            total += t.numel()
        else:
            mask = torch.rand(t.shape, generator=g) < rate
            logits = model(torch.where(mask, cfg.mask_id, t), c)
            n = float(mask.sum())
            correct += float(masked_token_accuracy(logits, t, mask)) * n
            total += n
    return correct / max(total, 1.0)


def run_train(profile: str, name: str, progress: bool = True) -> int:
    """One ``generator@<name>`` stage: train (resumably) and write checkpoint, loss curve, metrics."""
    from . import params as lib_params
    from . import tokenizers as T
    from . import tokens as TOK
    from .data.caption_dataset import load_split
    from .generation import train_autoregressive, train_masked
    from .io import sha256_file
    from .provenance import run_info, write_metrics
    from .training import write_loss_curve

    P = lib_params.load(profile)
    G = P["generation"]
    steps = steps_of(G, name)
    if steps == 0:
        return run_skipped(profile, [name])
    entry = G["models"][name]
    seed = seed_of(P, name)  # a seed replica's own seed (issue 17), else the profile's
    torch.manual_seed(seed)
    root = caption_root()
    train, test = load_split(root, "train"), load_split(root, "test")
    # The tokenizer is not run here: its tokens@<name> stage tokenized every split once (issue 15).
    t0 = time.perf_counter()
    cache = TOK.load(entry["tokenizer"], tokenizer_checkpoint=T.checkpoint_path(entry["tokenizer"]))
    tokens = cache["train"]
    if len(tokens) != len(train["images"]):
        raise AtelierInputError(f"{cache.path}: {len(tokens)} train token grids for {len(train['images'])} train images; "
                                f"run `dvc repro tokens@{entry['tokenizer']}` again")
    test_n = min(int(G["eval_n"]), len(test["images"]))
    test_tokens = cache["test"][:test_n]
    t_tok = time.perf_counter() - t0
    if entry["objective"] == "class":
        table = class_table()
        text_kw = dict(class_ids=torch.from_numpy(np.asarray(train["category"], dtype=np.int64)), text_table=table)
        test_cond = table.condition(torch.from_numpy(np.asarray(test["category"][:test_n], dtype=np.int64)))
    else:
        table, ids = text_table(progress=progress)
        text_kw = dict(caption_ids=ids["train"], text_table=table)
        test_cond = table.condition(ids["test"][:test_n, 0])
    model = build_model(P, name, cache)
    common = dict(steps=steps, batch_size=G["batch_size"], lr=G["lr"], seed=seed, warmup_steps=G["warmup_steps"],
                  cond_drop=G["cond_drop"], progress=progress, **text_kw)
    t0 = time.perf_counter()
    if entry["kind"] == "masked":
        mode = "muse" if entry["objective"] in ("muse", "class") else "m6"
        m6_kw = {}
        if mode == "m6":
            m6_kw["combination_probs"] = condition_mixture(entry)
        history = train_masked(model, tokens, checkpoint_path(name), mode=mode,
                               label_smoothing=G["label_smoothing"], **m6_kw, **common)
    else:
        history = train_autoregressive(model, tokens, checkpoint_path(name), **common)
    t_train = time.perf_counter() - t0
    model.eval()
    write_loss_curve(history, loss_path(name), every=max(1, len(history) // 300))
    acc = heldout_accuracy(model, test_tokens, test_cond, seed=seed)
    last = history[-50:]
    metrics = {
        "skipped": False, "steps": steps, "kind": entry["kind"], "objective": entry["objective"],
        "tokenizer": entry["tokenizer"], "parameters": int(sum(p.numel() for p in model.parameters())),
        "final_train_loss": float(np.mean([h["loss"] for h in last])),
        "final_train_acc": float(np.mean([h["acc"] for h in last])),
        "heldout_acc": acc,
        "heldout_acc_definition": ("masked-token accuracy at mask rate 0.5, first caption, first eval_n test images"
                                   if entry["kind"] == "masked" else "teacher-forced next-entry accuracy, first caption"),
        "num_train_images": int(len(tokens)), "num_heldout_images": int(test_n),
        "token_shape": list(cache.token_shape),
    }
    prov = run_info(profile, seed, model=name, config=entry,
                    transformer=model.config.to_dict(),
                    checkpoint=f"artifacts/generators/{name}/{CHECKPOINT}",
                    checkpoint_sha256=sha256_file(checkpoint_path(name)),
                    tokenizer_checkpoint_sha256=cache.tokenizer_sha256,
                    token_cache=f"artifacts/tokens/{entry['tokenizer']}/{TOK.FILE}",
                    training={k: v for k, v in common.items() if k not in ("progress", "caption_ids", "text_table",
                                                                          "class_ids")}
                    | {"objective": entry["objective"], "seconds": round(t_train, 1),
                       "token_cache_load_seconds": round(t_tok, 1),
                       "text_encoder": "frozen all-MiniLM-L6-v2 token features (lib.generation.TextFeatureTable)"})
    print(write_metrics(metrics_path(name), metrics, prov))
    return 0


def run_skipped(profile: str, names: list[str]) -> int:
    """:func:`write_skipped` for several names at once; a name the profile trains is an error."""
    from . import params as lib_params

    P = lib_params.load(profile)
    trained = [n for n in names if is_active(P["generation"], n)]
    if trained:
        raise AtelierInputError(f"generators {trained} are trained in profile {profile!r}: run "
                                "`python -m lib.generators train` for them, not `skip`")
    for name in names:
        for path in write_skipped(profile, name, P["seed"]):
            print(f"[generator {name}] skipped in profile {profile}: wrote {path}")
    return 0


def run_text_features(profile: str) -> int:
    """The ``text_features`` stage: caption and class-name token features, cached once."""
    from . import params as lib_params

    lib_params.load(profile)  # validates the profile name
    t0 = time.perf_counter()
    table, ids = text_table(progress=True)
    class_table()
    print(f"text features: {len(table)} distinct captions, {time.perf_counter() - t0:.0f} s -> {text_table_path()}")
    return 0


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lib.generators", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one named generator (or write its 'skipped' outputs)")
    tr.add_argument("--profile", required=True)
    tr.add_argument("--name", required=True)
    tf = sub.add_parser("text-features", help="cache token-level MiniLM features of every caption")
    tf.add_argument("--profile", required=True)
    sk = sub.add_parser("skip", help="write the 'skipped' outputs of several names the profile does not train, "
                                     "in one process (what `train` does for each; used by reproduce/test)")
    sk.add_argument("--profile", required=True)
    sk.add_argument("--name", required=True, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return run_train(args.profile, args.name)
        if args.command == "skip":
            return run_skipped(args.profile, args.name)
        return run_text_features(args.profile)
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main())
