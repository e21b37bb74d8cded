"""Pipelines: a trained generator + a scheduler (``lib.sampling``) + a tokenizer's decoder -> images.

The split follows diffusers: models (``lib.generation``) predict logits, schedulers decide which
tokens to keep, and these functions only wire the two together in batches (progress bars, seeds,
timing). Every function takes the condition as a :class:`lib.generation.Condition` of ``n`` rows
(or ``None`` for unconditional sampling) and returns ``[n, N, C]`` token grids.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from lib.generation import Condition
from lib.io import AtelierInputError
from lib.pipelines.tokenizers import decode_tokens
from lib.sampling import (
    AutoregressiveScheduler,
    ClassifierFreeGuidance,
    MaskGITScheduler,
    SMARTScheduler,
    sample,
    sample_autoregressive,
)
from lib.text.encoder import shared_encoder

SAMPLERS = ("maskgit", "smart", "autoregressive")


def make_scheduler(name: str, settings: Mapping[str, Any] | None = None, **overrides):
    """A fresh scheduler by name with ``generation.sampling`` settings (``overrides`` win)."""
    s = {**(settings or {}), **overrides}
    if name == "maskgit":
        return MaskGITScheduler(num_steps=int(s.get("maskgit_steps", 12)), temperature=float(s.get("temperature", 1.0)),
                                choice_temperature=float(s.get("choice_temperature", 4.5)))
    if name == "smart":
        # SMARTScheduler counts model calls: the paper's T iterations after the first full prediction.
        return SMARTScheduler(num_steps=int(s.get("smart_T", 10)) + 1, alpha=float(s.get("smart_alpha", 0.8)),
                              beta=float(s.get("smart_beta", 0.2)), temperature=float(s.get("temperature", 1.0)))
    raise AtelierInputError(f"unknown sampler {name!r} (known: maskgit, smart; autoregressive via sample_autoregressive)")


def _null_like(cond, n: int, device):
    if cond is None:
        return Condition.null(n, device)
    return cond.unconditional()


def masked_logits_fn(model, cond, guidance: float | Callable[[int], float] = 0.0, negative=None):
    """``logits_fn`` for the schedulers; with ``guidance`` > 0 Muse Sec. 2.7 classifier-free guidance
    ``(1 + t) l_c - t l_u`` in one batched pass (conditional rows, then unconditional rows, or the
    ``negative`` prompt's rows in place of the unconditional ones)."""
    # The condition is the same at every step: embed it (and, with cross-attention, its text
    # keys/values) once per batch size, not once per step (MaskedTokenTransformer.encode_condition).
    caches: dict[int, Any] = {}
    encode = getattr(model, "encode_condition", None)

    def call(tokens: torch.Tensor, c) -> torch.Tensor:
        if encode is None:
            return model(tokens, c)
        b = tokens.shape[0]
        if b not in caches:
            caches[b] = encode(c, b)
        return model(tokens, c, cache=caches[b])

    if (not callable(guidance)) and float(guidance) == 0.0:
        return lambda tokens: call(tokens, cond)
    other = negative
    both: dict[int, Any] = {}

    def batched(tokens2: torch.Tensor) -> torch.Tensor:
        n = tokens2.shape[0] // 2
        if n not in both:
            c = cond if cond is not None else Condition.null(n, tokens2.device)
            u = other if other is not None else _null_like(cond, n, tokens2.device)
            both[n] = Condition.cat([c, u])
        return call(tokens2, both[n])

    return ClassifierFreeGuidance.from_batched(batched, guidance)


def _batches(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


@torch.no_grad()
def sample_masked(model, cond, n: int, scheduler_factory: Callable[[], Any], *, guidance: Any = 0.0, negative=None,
                  tokens: torch.Tensor | None = None, known: torch.Tensor | None = None, seed: int = 0,
                  batch_size: int = 250, keep_frames: bool = False, frames_of: str = "tokens",
                  progress: bool = False) -> dict[str, Any]:
    """Parallel decoding of ``n`` grids with a fresh scheduler per batch.

    ``tokens``/``known`` (``[n,N,C]``) fix given entries (editing); default: everything unknown.
    ``guidance``: a constant or ``t -> scale`` (e.g. :class:`lib.sampling.LinearGuidanceSchedule`).
    Returns ``{"tokens", "frames" (per batch, if kept), "seconds", "seconds_per_image"}``.
    """
    cfg = model.config
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    if tokens is None:
        tokens = torch.full((n, cfg.num_positions, cfg.channels), cfg.mask_id, dtype=torch.long)
        known = torch.zeros_like(tokens, dtype=torch.bool)
    elif known is None or known.shape != tokens.shape:
        raise AtelierInputError("sample_masked: tokens given without a matching known mask")
    if cond is not None and cond.batch_size not in (None, n):
        raise AtelierInputError(f"sample_masked: condition has {cond.batch_size} rows for n={n}")
    out, frames = [], []
    t0 = time.perf_counter()
    for sl in tqdm(list(_batches(n, batch_size)), desc="sampling", disable=not progress):
        c = cond.select(sl).to(device) if cond is not None else None
        neg = negative.select(sl).to(device) if negative is not None else None
        fn = masked_logits_fn(model, c, guidance, neg)
        toks, fr = sample(fn, scheduler_factory(), tokens[sl].to(device), known[sl].to(device), cfg.mask_id,
                          generator=gen, keep_frames=keep_frames, frames_of=frames_of)
        out.append(toks.cpu())
        frames.append([f.cpu() for f in fr])
    seconds = time.perf_counter() - t0
    return {"tokens": torch.cat(out), "frames": frames, "seconds": seconds, "seconds_per_image": seconds / max(n, 1)}


@torch.no_grad()
def sample_ar(model, cond, n: int, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
              use_cache: bool = True, seed: int = 0, batch_size: int = 250, progress: bool = False) -> dict[str, Any]:
    """Raster-order sampling of the autoregressive baseline (KV cache on, or the whole prefix
    recomputed each step as Taming's sampler does)."""
    cfg = model.config
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    t0 = time.perf_counter()
    for sl in tqdm(list(_batches(n, batch_size)), desc="AR sampling", disable=not progress):
        b = sl.stop - sl.start
        c = cond.select(sl).to(device) if cond is not None else None
        sched = AutoregressiveScheduler(cfg.num_positions * cfg.channels, temperature=temperature, top_k=top_k,
                                        top_p=top_p)
        tokens = torch.full((b, cfg.num_positions, cfg.channels), cfg.mask_id, dtype=torch.long, device=device)
        known = torch.zeros_like(tokens, dtype=torch.bool)
        toks, _ = sample_autoregressive(model.next_logits, model.append, model.start(c, b, use_cache=use_cache),
                                        sched, tokens, known, cfg.mask_id, generator=gen)
        out.append(toks.cpu())
    seconds = time.perf_counter() - t0
    return {"tokens": torch.cat(out), "frames": [], "seconds": seconds, "seconds_per_image": seconds / max(n, 1)}


@torch.no_grad()
def generate(model, dec, cond, n: int, sampler: str, settings: Mapping[str, Any], *, guidance: Any = 0.0,
             negative=None, seed: int = 0, use_cache: bool = True, keep_frames: bool = False,
             frames_of: str = "tokens", progress: bool = False) -> dict[str, Any]:
    """Sample ``n`` images with ``sampler`` (``maskgit`` / ``smart`` for masked models,
    ``autoregressive`` for the baseline) and decode them with ``dec``.

    Returns the :func:`sample_masked` / :func:`sample_ar` dict plus ``images`` (float [-1, 1]) and
    ``seconds_per_image`` covering sampling *and* decoding (what a user waits for).
    """
    t0 = time.perf_counter()
    if sampler == "autoregressive":
        out = sample_ar(model, cond, n, temperature=float(settings.get("temperature", 1.0)),
                        top_k=settings.get("top_k"), use_cache=use_cache, seed=seed, progress=progress)
    else:
        out = sample_masked(model, cond, n, lambda: make_scheduler(sampler, settings), guidance=guidance,
                            negative=negative, seed=seed, keep_frames=keep_frames, frames_of=frames_of,
                            progress=progress)
    out["images"] = decode_tokens(dec, out["tokens"])
    out["seconds_total"] = time.perf_counter() - t0
    out["seconds_per_image"] = out["seconds_total"] / max(n, 1)
    return out


def encode_prompts(texts: list[str], device: str = "cpu"):
    """A text :class:`lib.generation.Condition` for free-form prompts (editing prompts are not in
    the caption table): frozen MiniLM token features, computed on the fly."""
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise AtelierInputError("encode_prompts: every prompt must be a non-empty string")
    with torch.no_grad():
        out = shared_encoder()(list(texts))
    return Condition(text_tokens=out["tokens"].float().to(device), text_mask=out["mask"].bool().to(device))


def visual_condition(grids: list[torch.Tensor], boxes: list[tuple[int, int, int, int]], height: int, width: int,
                     max_tokens: int) -> dict[str, torch.Tensor]:
    """M6-Fashion visual conditions (Sec. 3.1): the tokens of ``boxes[i]`` (top, left, h, w) cut from
    ``grids[i]`` (``[B, N, C]``, one crop per grid), concatenated as crops 0, 1, ... with their
    source-grid raster positions; padded to ``max_tokens``. Returns the ``Condition`` visual fields."""
    if len(grids) != len(boxes) or not grids:
        raise AtelierInputError("visual_condition: give one box per grid (at least one)")
    b, _, c = grids[0].shape
    toks, pos, seg = [], [], []
    for k, (g, (t, l, h, w)) in enumerate(zip(grids, boxes)):
        if not (0 <= t and 0 <= l and t + h <= height and l + w <= width and h > 0 and w > 0):
            raise AtelierInputError(f"visual_condition: box {k} {(t, l, h, w)} is not inside the {height}x{width} grid")
        p = torch.tensor([r * width + q for r in range(t, t + h) for q in range(l, l + w)])
        toks.append(g[:, p])
        pos.append(p.expand(b, -1))
        seg.append(torch.full((b, len(p)), k, dtype=torch.long))
    toks, pos, seg = torch.cat(toks, 1), torch.cat(pos, 1), torch.cat(seg, 1)
    if toks.shape[1] > max_tokens:
        raise AtelierInputError(f"visual_condition: {toks.shape[1]} crop tokens exceed the model's max_visual_tokens "
                                f"({max_tokens}); use smaller boxes")
    pad = max_tokens - toks.shape[1]
    valid = torch.ones(b, toks.shape[1], dtype=torch.bool)
    if pad:
        toks = torch.cat([toks, torch.zeros(b, pad, c, dtype=torch.long)], 1)
        pos = torch.cat([pos, torch.zeros(b, pad, dtype=torch.long)], 1)
        seg = torch.cat([seg, seg[:, -1:].expand(b, pad)], 1)
        valid = torch.cat([valid, torch.zeros(b, pad, dtype=torch.bool)], 1)
    return {"visual_tokens": toks, "visual_positions": pos, "visual_valid": valid, "visual_segment": seg}
