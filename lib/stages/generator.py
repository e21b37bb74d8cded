"""Named stage-two generators: configurations from ``params.yaml``, token caches, the DVC stage driver.

``params.yaml`` describes every generator as data (validated by :mod:`lib.config`):

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
``generator@<name>`` per model (``python -m lib.stages.generator train --profile P --name NAME``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lib.config as lib_params
import lib.store.tokenizers as tokenizer_store
from lib.config.generation import is_active, seed_of, steps_of
from lib.data.caption_dataset import load_split
from lib.generation import ARTransformer, masked_token_accuracy, train_autoregressive, train_masked
from lib.generation.masking import condition_mixture
from lib.io import AtelierInputError, atomic_write_json, sha256_file
from lib.pipelines.generators import (
    build_model,
    class_table,
    text_table,
)
from lib.provenance import run_info, write_metrics
from lib.stages import tokens as TOK
from lib.store import caption_root
from lib.store.generators import (
    CHECKPOINT,
    checkpoint_path,
    loss_path,
    metrics_path,
    text_table_path,
)
from lib.training import write_loss_curve

KINDS = ("masked", "autoregressive")
OBJECTIVES = ("muse", "m6", "class")
ARCH_KEYS = ("dim", "depth", "heads", "mlp_ratio")


# ---------------------------------------------------------------------------------------------
# Configurations and paths
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Data: captions, text features, tokens
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# The training stage
# ---------------------------------------------------------------------------------------------
def write_skipped(profile: str, name: str, seed: int) -> list[Path]:
    reason = f"not trained in profile {profile!r} (profiles.{profile}.generation.steps.{name} = 0)"
    ckpt_dir = checkpoint_path(name).parent
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ckpt_dir / "skipped.json", {"skipped": True, "reason": reason})
    atomic_write_json(loss_path(name), [])
    return [ckpt_dir / "skipped.json", loss_path(name),
            write_metrics(metrics_path(name), {"skipped": True, "reason": reason}, run_info(profile, seed, model=name))]


@torch.no_grad()
def heldout_accuracy(model, tokens: torch.Tensor, cond, rate: float = 0.5, seed: int = 0,
                     batch_size: int = 256) -> float:
    """Masked-token accuracy of a masked model on held-out token grids at a fixed mask rate
    (next-entry accuracy for the autoregressive baseline): a training-independent quality check."""
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
    cache = TOK.load(entry["tokenizer"], tokenizer_checkpoint=tokenizer_store.checkpoint_path(entry["tokenizer"]))
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
    P = lib_params.load(profile)
    trained = [n for n in names if is_active(P["generation"], n)]
    if trained:
        raise AtelierInputError(f"generators {trained} are trained in profile {profile!r}: run "
                                "`python -m lib.stages.generator train` for them, not `skip`")
    for name in names:
        for path in write_skipped(profile, name, P["seed"]):
            print(f"[generator {name}] skipped in profile {profile}: wrote {path}")
    return 0


def run_text_features(profile: str) -> int:
    """The ``text_features`` stage: caption and class-name token features, cached once."""
    lib_params.load(profile)  # validates the profile name
    t0 = time.perf_counter()
    table, ids = text_table(progress=True)
    class_table()
    print(f"text features: {len(table)} distinct captions, {time.perf_counter() - t0:.0f} s -> {text_table_path()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.stages.generator", description=__doc__.split("\n\n")[0])
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
    sys.exit(main())
