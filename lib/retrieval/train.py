"""UniFashion's two training phases for the retrieval/captioning side (Sec. 3.1, 3.2, 4.1).

- Phase 1, :func:`train_phase1_qformer`: the Q-Former on image-caption pairs with
  ``L_cross = L_ITC + L_ITM`` (Eq. 5), BLIP-2's representation-learning stage.
- Phase 1, :func:`train_phase1_captioner`: "we freeze the parameters of Q-Former and fine-tune only
  the adapter layers" -- here the adapter *and* the small caption decoder standing in for the LLM
  (which has no pretrained weights to keep), with L_ITG (Eq. 6).
- Phase 2, :func:`train_phase2_composed`: the Q-Former tuned on (reference, modification text,
  target) triplets with L_cir (Eq. 10); "we freeze the parameters of LLM and diffusion model, only
  fine-tune the multimodal encoder". With a ``decoder`` the frozen captioner adds Eq. 11's L_ITG on
  the composed query outputs ``q_R`` (the target's caption), and with a ``query_generator`` (frozen;
  :mod:`.query_generation`) Eq. 12's target-image term, so the loss is L_stage2 (Eq. 13).

Inputs are in-memory arrays, never file paths: frozen image features ``[N, S, C_f]`` (see
:mod:`lib.retrieval.features`), and a table of distinct texts' frozen MiniLM token features
``text_tokens [U, L, 384]`` / ``text_mask [U, L]`` that integer id arrays index (captions and
modification texts alike; :func:`lib.text.cache.caption_index` builds such ids). Every phase is
resumable through :class:`lib.training.ResumableTrainer`: the batch of step ``s`` depends on ``s``
alone, so a killed run resumes to the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lib.io import AtelierInputError
from lib.retrieval.caption_decoder import CaptionDecoder
from lib.retrieval.losses import (
    cir_target_caption_itc,
    cir_target_image_itc,
    cir_text_target_itm,
    image_text_contrastive,
    itm_loss,
)
from lib.retrieval.qformer import QFormer
from lib.training import ResumableTrainer, batch_indices, lr_factor, set_lr, step_seed

PHASES = ("itc_itm", "captioner", "composed")


def phase_arch(model: torch.nn.Module, phase: str) -> dict:
    """The checkpoint ``arch`` of ``model`` trained in ``phase`` (a phase-2 checkpoint is not a
    phase-1 one, although the weights have the same names)."""
    if phase not in PHASES:
        raise AtelierInputError(f"phase must be one of {PHASES}, got {phase!r}")
    return {**model.arch, "phase": phase}


def _as_long(x: Any, name: str, dims: tuple[int, ...]) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or t.dim() not in dims:
        raise AtelierInputError(f"{name} must be an integer array with {' or '.join(map(str, dims))} dims, "
                                f"got {t.dtype} {tuple(t.shape)}")
    return t.long().cpu()


def _check_range(ids: torch.Tensor, n: int, name: str, table: str) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise AtelierInputError(f"{name} has values outside [0, {n}) (rows of {table})")


def _check_text_table(text_tokens: torch.Tensor, text_mask: torch.Tensor) -> None:
    if text_tokens.dim() != 3 or text_mask.shape != text_tokens.shape[:2]:
        raise AtelierInputError(f"text_tokens must be [U, L, 384] and text_mask [U, L], got "
                                f"{tuple(text_tokens.shape)} and {tuple(text_mask.shape)}")


def _check_feats(image_feats: torch.Tensor) -> None:
    if not torch.is_tensor(image_feats) or image_feats.dim() != 3:
        raise AtelierInputError(f"image_feats must be a [N, S, C_f] tensor, got "
                                f"{tuple(getattr(image_feats, 'shape', ()))}")


def _pick(ids: torch.Tensor, rows: Any) -> torch.Tensor:
    """One column per row: ``ids[rows]`` if 1-D, else a column drawn with the (step-seeded) torch RNG."""
    sel = ids[torch.as_tensor(rows)]
    if sel.dim() == 1:
        return sel
    return sel[torch.arange(len(sel)), torch.randint(sel.shape[1], (len(sel),))]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_phase1_qformer(model: QFormer, image_feats: torch.Tensor, caption_ids: Any, text_tokens: torch.Tensor,
                         text_mask: torch.Tensor, ckpt_path: str | Path, *, steps: int, batch_size: int = 64,
                         lr: float = 1e-4, weight_decay: float = 0.05, warmup: int = 100, itm_weight: float = 1.0,
                         seed: int = 0, ckpt_every: Optional[int] = None, progress: bool = True) -> list[dict]:
    """Phase 1, cross-modal retrieval (Sec. 3.1.1): ``L_cross = L_ITC(t_c, Z_I) + L_ITM(Z_C, Z_I)``.

    ``caption_ids [N, c]``: for image ``i`` the rows of the text table holding its ``c`` captions;
    each step pairs every image of the batch with one of them at random. Another image whose
    captions include the drawn caption counts as a positive for it (duplicates are not negatives).
    Returns the loss history (``loss``, ``itc``, ``itm``, ``itm_acc``, ``temperature``).
    """
    _check_feats(image_feats)
    _check_text_table(text_tokens, text_mask)
    caption_ids = _as_long(caption_ids, "caption_ids", (2,))
    if caption_ids.shape[0] != image_feats.shape[0]:
        raise AtelierInputError(f"caption_ids has {caption_ids.shape[0]} rows for {image_feats.shape[0]} images")
    _check_range(caption_ids, text_tokens.shape[0], "caption_ids", "text_tokens")
    device = _device(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def step_fn(step: int) -> dict:
        set_lr(opt, lr * lr_factor(step, steps, warmup))
        idx = batch_indices(len(image_feats), batch_size, step, seed)
        caps = _pick(caption_ids, idx)
        feats = image_feats[torch.as_tensor(idx)].to(device).float()
        tok, msk = text_tokens[caps].to(device).float(), text_mask[caps].to(device)
        positive = (caption_ids[torch.as_tensor(idx)][:, :, None] == caps[None, None, :]).any(1).to(device)
        scale = model.logit_scale()
        itc, sim = image_text_contrastive(model.image_embeds(feats), model.text_embed(tok, msk), scale, positive)
        itm, stats = itm_loss(model.itm_logits, feats, tok, msk, sim.detach(), positive, scale.detach())
        loss = itc + itm_weight * itm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "itc": itc.item(), "itm": itm.item(), "itm_acc": stats["itm_acc"],
                "temperature": float(model.temp.detach().clamp(0.001, 0.5))}

    trainer = ResumableTrainer(model, opt, ckpt_path, phase_arch(model, "itc_itm"), seed, steps,
                               ckpt_every=ckpt_every or max(50, steps // 10), desc="Q-Former ITC+ITM")
    history = trainer.run(step_fn, progress=progress)
    model.eval()
    return history


def train_phase1_captioner(qformer: QFormer, decoder: CaptionDecoder, image_feats: torch.Tensor, caption_ids: Any,
                           caption_tokens: Any, ckpt_path: str | Path, *, steps: int, batch_size: int = 64,
                           lr: float = 3e-4, weight_decay: float = 0.01, warmup: int = 100,
                           instruction: Optional[str] = None, seed: int = 0, ckpt_every: Optional[int] = None,
                           progress: bool = True) -> list[dict]:
    """Phase 1, caption generation (Sec. 3.1.2, Eq. 6): the decoder and its adapter learn
    ``p(w_l | w_<l, f_theta(q))`` from the frozen Q-Former's image query outputs.

    ``caption_ids [N, c]`` index ``caption_tokens [U, T]``, the word ids of the distinct captions
    (:meth:`CaptionVocab.encode_batch`). ``instruction``: a Table 7 prompt name known to the decoder.
    """
    _check_feats(image_feats)
    caption_ids = _as_long(caption_ids, "caption_ids", (2,))
    caption_tokens = _as_long(caption_tokens, "caption_tokens", (2,))
    if caption_ids.shape[0] != image_feats.shape[0]:
        raise AtelierInputError(f"caption_ids has {caption_ids.shape[0]} rows for {image_feats.shape[0]} images")
    _check_range(caption_ids, caption_tokens.shape[0], "caption_ids", "caption_tokens")
    _check_range(caption_tokens, len(decoder.vocab), "caption_tokens", "the decoder's vocabulary")
    device = _device(decoder)
    qformer.eval()
    flags = [p.requires_grad for p in qformer.parameters()]
    qformer.requires_grad_(False)
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def step_fn(step: int) -> dict:
        set_lr(opt, lr * lr_factor(step, steps, warmup))
        idx = batch_indices(len(image_feats), batch_size, step, seed)
        caps = _pick(caption_ids, idx)
        with torch.no_grad():
            q = qformer.query_outputs(image_feats[torch.as_tensor(idx)].to(device).float())
        loss = decoder.loss(q, caption_tokens[caps].to(device), instruction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    trainer = ResumableTrainer(decoder, opt, ckpt_path, phase_arch(decoder, "captioner"), seed, steps,
                               ckpt_every=ckpt_every or max(50, steps // 10), desc="caption decoder")
    try:
        history = trainer.run(step_fn, progress=progress)
    finally:
        for p, flag in zip(qformer.parameters(), flags):
            p.requires_grad_(flag)
    decoder.eval()
    return history


def train_phase2_composed(model: QFormer, image_feats: torch.Tensor, reference_index: Any, target_index: Any,
                          modification_ids: Any, caption_ids: Any, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                          ckpt_path: str | Path, *, steps: int, batch_size: int = 64, lr: float = 5e-5,
                          weight_decay: float = 0.05, warmup: int = 50,
                          loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                          decoder: Optional[CaptionDecoder] = None, caption_tokens: Any = None,
                          itg_weight: float = 1.0, instruction: Optional[str] = None,
                          query_generator: Any = None, target_tokens: Optional[torch.Tensor] = None,
                          generation_weight: float = 1.0, seed: int = 0,
                          ckpt_every: Optional[int] = None, progress: bool = True) -> list[dict]:
    """Phase 2, composed image retrieval (Sec. 3.2.1): the Q-Former tuned with
    ``L_cir = L_ITC(e_cls, Z_T) + L_ITC(e_cls, Z_C) + L_ITM(t, Z_T)`` (Eq. 10), weighted by
    ``loss_weights``.

    Triplet ``j`` is (``image_feats[reference_index[j]]``, text row ``modification_ids[j]``,
    ``image_feats[target_index[j]]``); ``modification_ids`` may be ``[T, k]`` (one of ``k`` phrasings
    drawn per step). ``caption_ids [N, c]``: text rows of each image's captions; the target's
    caption ``Z_C`` is drawn from them (pass generated captions here to train as the paper
    evaluates). Duplicate targets in a batch are positives; for the caption term so are identical
    captions. With ``decoder`` (frozen) and ``caption_tokens [U, T]`` (word ids of the text rows),
    ``itg_weight`` x Eq. 11's L_ITG on ``q_R`` is added. With ``query_generator`` (frozen; a
    :class:`~lib.retrieval.query_generation.QueryGenerator`) and ``target_tokens [N, positions, C]``
    (the token grid of every image row), ``generation_weight`` x Eq. 12's L_q2I -- the masked-token
    loss of the target's tokens generated from ``q_R`` -- is added.
    """
    _check_feats(image_feats)
    _check_text_table(text_tokens, text_mask)
    n = image_feats.shape[0]
    reference_index = _as_long(reference_index, "reference_index", (1,))
    target_index = _as_long(target_index, "target_index", (1,))
    modification_ids = _as_long(modification_ids, "modification_ids", (1, 2))
    caption_ids = _as_long(caption_ids, "caption_ids", (2,))
    if not len(reference_index) == len(target_index) == len(modification_ids):
        raise AtelierInputError(f"reference_index, target_index, modification_ids have {len(reference_index)}, "
                                f"{len(target_index)}, {len(modification_ids)} rows; one per triplet needed")
    if caption_ids.shape[0] != n:
        raise AtelierInputError(f"caption_ids has {caption_ids.shape[0]} rows for {n} images")
    _check_range(reference_index, n, "reference_index", "image_feats")
    _check_range(target_index, n, "target_index", "image_feats")
    _check_range(modification_ids, text_tokens.shape[0], "modification_ids", "text_tokens")
    _check_range(caption_ids, text_tokens.shape[0], "caption_ids", "text_tokens")
    if len(loss_weights) != 3:
        raise AtelierInputError(f"loss_weights must hold Eq. 10's three weights, got {loss_weights}")
    use_itg = decoder is not None and itg_weight > 0
    if use_itg:
        if caption_tokens is None:
            raise AtelierInputError("decoder given without caption_tokens (word ids of the text rows) for L_ITG")
        caption_tokens = _as_long(caption_tokens, "caption_tokens", (2,))
        if caption_tokens.shape[0] != text_tokens.shape[0]:
            raise AtelierInputError(f"caption_tokens has {caption_tokens.shape[0]} rows, the text table "
                                    f"{text_tokens.shape[0]}")
        decoder.eval()
        dec_flags = [p.requires_grad for p in decoder.parameters()]
        decoder.requires_grad_(False)
    use_gen = query_generator is not None and generation_weight > 0
    if use_gen:
        if target_tokens is None:
            raise AtelierInputError("query_generator given without target_tokens (a token grid per image row) for L_q2I")
        cfg = query_generator.config
        if target_tokens.dtype != torch.long or tuple(target_tokens.shape) != (n, cfg.num_positions, cfg.channels):
            raise AtelierInputError(f"target_tokens must be long [{n}, {cfg.num_positions}, {cfg.channels}], got "
                                    f"{target_tokens.dtype} {list(target_tokens.shape)}")
        query_generator.eval()
        gen_flags = [p.requires_grad for p in query_generator.parameters()]
        query_generator.requires_grad_(False)
    device = _device(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    w_img, w_cap, w_itm = loss_weights

    def step_fn(step: int) -> dict:
        set_lr(opt, lr * lr_factor(step, steps, warmup))
        rows = batch_indices(len(target_index), batch_size, step, seed)
        ref, tgt = reference_index[torch.as_tensor(rows)], target_index[torch.as_tensor(rows)]
        mod = _pick(modification_ids, rows)
        cap = _pick(caption_ids, tgt)
        ref_f, tgt_f = image_feats[ref].to(device).float(), image_feats[tgt].to(device).float()
        mod_tok, mod_msk = text_tokens[mod].to(device).float(), text_mask[mod].to(device)
        q_r, t_r = model.composed_outputs(ref_f, mod_tok, mod_msk)
        composed = model.cls_embed(t_r)
        same_target = (tgt[:, None] == tgt[None, :]).to(device)
        same_caption = same_target | (cap[:, None] == cap[None, :]).to(device)
        scale = model.logit_scale()
        l_img, sim = cir_target_image_itc(composed, model.image_embeds(tgt_f), scale, same_target)
        cap_emb = model.text_embed(text_tokens[cap].to(device).float(), text_mask[cap].to(device))
        l_cap = cir_target_caption_itc(composed, cap_emb, scale, same_caption)
        l_itm, stats = cir_text_target_itm(model.itm_logits, tgt_f, mod_tok, mod_msk, sim.detach(), same_target,
                                           scale.detach())
        loss = w_img * l_img + w_cap * l_cap + w_itm * l_itm
        logs = {"itc_target": l_img.item(), "itc_caption": l_cap.item(), "itm": l_itm.item(),
                "itm_acc": stats["itm_acc"]}
        if use_itg:
            l_itg = decoder.loss(q_r, caption_tokens[cap].to(device), instruction)
            loss = loss + itg_weight * l_itg
            logs["itg"] = l_itg.item()
        if use_gen:
            g = torch.Generator().manual_seed(step_seed(seed + 104729, step))
            l_q2i, acc = query_generator.loss(q_r, target_tokens[tgt].to(device), g)
            loss = loss + generation_weight * l_q2i
            logs.update(q2i=l_q2i.item(), q2i_acc=float(acc))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), **logs, "temperature": float(model.temp.detach().clamp(0.001, 0.5))}

    trainer = ResumableTrainer(model, opt, ckpt_path, phase_arch(model, "composed"), seed, steps,
                               ckpt_every=ckpt_every or max(50, steps // 10), desc="Q-Former composed (Eq. 10)")
    try:
        history = trainer.run(step_fn, progress=progress)
    finally:
        if use_itg:
            for p, flag in zip(decoder.parameters(), dec_flags):
                p.requires_grad_(flag)
        if use_gen:
            for p, flag in zip(query_generator.parameters(), gen_flags):
                p.requires_grad_(flag)
    model.eval()
    return history
