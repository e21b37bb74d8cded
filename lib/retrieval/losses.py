"""UniFashion's retrieval objectives: ITC (Eq. 3), ITM (Eq. 4) and the composed loss (Eq. 10).

Similarities between an image and a text follow Sec. 3.1.1: "Since Z_I contains multiple output
embeddings (one from each query), we first compute the pairwise similarity between each query
output and e_cls, and then select the highest one as the image-text similarity"
(:func:`max_query_similarity`).

Positives: a batch may hold the same caption (or target) twice; such duplicates are positives, not
negatives (ALBEF/BLIP-2 spread the contrastive target over all positives of a row; the ITM miner
never draws a positive as a "hard negative").
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from lib.io import AtelierInputError

ItmFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def max_query_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``[N, M]``: for image ``n`` and text ``m``, the largest cosine between one of the ``Q`` query
    embeddings ``image_embeds[n] [Q, e]`` and ``text_embeds[m] [e]`` (UniFashion Sec. 3.1.1)."""
    if image_embeds.dim() != 3 or text_embeds.dim() != 2 or image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise AtelierInputError(f"max_query_similarity: expected [N, Q, e] and [M, e], got "
                                f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    n, q, e = image_embeds.shape
    return (image_embeds.reshape(n * q, e) @ text_embeds.T).view(n, q, -1).amax(1)


def _soft_targets(positive_mask: Optional[torch.Tensor], rows: int, cols: int, device) -> torch.Tensor:
    if positive_mask is None:
        if rows != cols:
            raise AtelierInputError(f"a [{rows}, {cols}] similarity needs a positive_mask (no diagonal to use)")
        return torch.eye(rows, device=device)
    if tuple(positive_mask.shape) != (rows, cols):
        raise AtelierInputError(f"positive_mask has shape {tuple(positive_mask.shape)}, expected {(rows, cols)}")
    pos = positive_mask.to(device=device, dtype=torch.float32)
    if bool((pos.sum(1) == 0).any()):
        raise AtelierInputError("positive_mask: every row needs at least one positive")
    return pos / pos.sum(1, keepdim=True)


def itc_loss(sim: torch.Tensor, logit_scale: torch.Tensor, positive_mask: Optional[torch.Tensor] = None,
             symmetric: bool = True) -> torch.Tensor:
    """Image-text contrastive loss, UniFashion Eq. 3:
    "L_ITC(X, Y) = -1/B sum_i log exp[lambda (X_i . Y_i)] / sum_j exp[lambda (X_i . Y_j)],
    where lambda is a learnable temperature parameter".

    ``sim[i, j] = X_i . Y_j`` (rows X, columns Y); ``logit_scale`` = lambda. With a
    ``positive_mask`` the target of row ``i`` is spread uniformly over its positives (duplicates in
    the batch), otherwise it is the diagonal. ``symmetric=True`` averages the X->Y and Y->X terms:
    the "symmetrical contrastive loss" of Eq. 5 and BLIP-2's ITC; ``False`` is Eq. 3 as written.
    """
    logits = sim.float() * logit_scale
    targets = _soft_targets(positive_mask, *sim.shape, device=sim.device)
    loss = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    if not symmetric:
        return loss
    targets_t = _soft_targets(None if positive_mask is None else positive_mask.T, sim.shape[1], sim.shape[0],
                              sim.device)
    return 0.5 * (loss - (targets_t * F.log_softmax(logits.T, dim=1)).sum(1).mean())


def image_text_contrastive(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                           positive_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase-1 ITC (Eq. 3 and 5, "L_ITC(t_c, Z_I)"): symmetric InfoNCE on the max-over-queries
    similarity of image query embeddings ``[B, Q, e]`` and caption [CLS] embeddings ``[B, e]``.
    Returns ``(loss, sim [B, B])``; the similarity feeds the ITM hard-negative miner."""
    sim = max_query_similarity(image_embeds, text_embeds)
    return itc_loss(sim, logit_scale, positive_mask, symmetric=True), sim


def sample_hard_negatives(sim: torch.Tensor, positive_mask: torch.Tensor, logit_scale: torch.Tensor,
                          generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``sim [B, C]``, one column drawn with probability ``softmax(lambda * sim)``
    restricted to non-positive columns (BLIP-2's ITM negative mining). Returns ``(index [B],
    valid [B] bool)``; a row whose every column is a positive has no negative (``valid`` False)."""
    if tuple(positive_mask.shape) != tuple(sim.shape):
        raise AtelierInputError(f"positive_mask has shape {tuple(positive_mask.shape)}, sim {tuple(sim.shape)}")
    with torch.no_grad():
        negative = ~positive_mask.to(device=sim.device, dtype=torch.bool)
        valid = negative.any(1)
        weights = torch.softmax(sim.float() * logit_scale, dim=1) * negative
        # Underflow can zero every negative weight of a row although negatives exist: fall back to
        # uniform over them; rows without any negative get a dummy row (dropped via ``valid``).
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, negative.float())
        weights = torch.where(valid[:, None], weights, torch.ones_like(weights))
        index = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return index, valid


def itm_loss(itm_fn: ItmFn, image_feats: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
             sim: torch.Tensor, positive_mask: torch.Tensor, logit_scale: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Image-text matching (UniFashion Eq. 4; BLIP-2's ITM): "a binary classification task where the
    model is asked to predict whether an image-text pair is positive (matched) or negative (unmatched)".

    ``itm_fn(image_feats, text_tokens, text_mask) -> [n, 2]`` logits (the ITM head on the mean
    bidirectional query output). The batch's ``B`` positive pairs are classified together with, for
    every text, a hard negative image and, for every image, a hard negative text, drawn by
    :func:`sample_hard_negatives` from ``sim [B, B]`` (image rows, text columns) and
    ``positive_mask [B, B]``. Eq. 4 is printed as a softmax over candidates ``X_j``; we follow the
    binary cross-entropy form of the text and of BLIP-2's implementation. Returns ``(loss, stats)``.
    """
    b = sim.shape[0]
    neg_text, ok_t = sample_hard_negatives(sim, positive_mask, logit_scale, generator)       # per image
    neg_image, ok_i = sample_hard_negatives(sim.T, positive_mask.T, logit_scale, generator)  # per text
    rows_img = torch.cat([torch.arange(b, device=sim.device), neg_image[ok_i], torch.nonzero(ok_t).squeeze(1)])
    rows_txt = torch.cat([torch.arange(b, device=sim.device), torch.nonzero(ok_i).squeeze(1), neg_text[ok_t]])
    labels = torch.zeros(len(rows_img), dtype=torch.long, device=sim.device)
    labels[:b] = 1
    logits = itm_fn(image_feats[rows_img], text_tokens[rows_txt], text_mask[rows_txt])
    loss = F.cross_entropy(logits.float(), labels)
    acc = float((logits.argmax(1) == labels).float().mean())
    return loss, {"itm_acc": acc, "itm_negatives": float(len(rows_img) - b)}


# ------------------------------------------------------------------------------------------------
# Composed image retrieval, UniFashion Eq. 10:
#   L_cir = L_ITC(e_cls, Z_T) + L_ITC(e_cls, Z_C) + L_ITM(t, Z_T)
# ------------------------------------------------------------------------------------------------
def cir_target_image_itc(composed: torch.Tensor, target_image_embeds: torch.Tensor, logit_scale: torch.Tensor,
                         positive_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10, first term ``L_ITC(e_cls, Z_T)``: "we can use Z_R as a representation that incorporates
    information from the reference image and the guidance text and align it with the features of
    the target image Z_T".

    ``composed [B, e]``: the composed query's [CLS] embedding; ``target_image_embeds [B, Q, e]``:
    the target images' query embeddings (similarity = max over queries). Eq. 3 from the query side
    (composed query -> gallery image, as retrieval ranks). Returns ``(loss, sim [B, B])``."""
    sim = max_query_similarity(target_image_embeds, composed).T
    return itc_loss(sim, logit_scale, positive_mask, symmetric=False), sim


def cir_target_caption_itc(composed: torch.Tensor, target_caption_embeds: torch.Tensor, logit_scale: torch.Tensor,
                           positive_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 10, second term ``L_ITC(e_cls, Z_C)``: "we can generate captions for the candidate images
    and use e_cls to retrieve the caption Z_C of the target image".

    ``target_caption_embeds [B, e]``: text-only [CLS] embeddings of the target images' captions
    (generated by the phase-1 captioner, or ground truth during training). Eq. 3 from the query side."""
    return itc_loss(composed @ target_caption_embeds.T, logit_scale, positive_mask, symmetric=False)


def cir_text_target_itm(itm_fn: ItmFn, target_feats: torch.Tensor, mod_tokens: torch.Tensor, mod_mask: torch.Tensor,
                        sim: torch.Tensor, positive_mask: torch.Tensor, logit_scale: torch.Tensor,
                        generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 10, third term ``L_ITM(t, Z_T)``: image-text matching (Eq. 4) between the guidance text
    ``t`` and the target image: does modification text ``i`` describe target image ``j``?

    The ITM head reads the bidirectional pass of target image and modification text; hard negatives
    are mined from ``sim`` (the first term's composed-query -> target similarity, queries as rows),
    positives (duplicate targets) excluded. Our reading of the notation ``L_ITM(t, Z_T)``; the paper
    gives no further detail."""
    return itm_loss(itm_fn, target_feats, mod_tokens, mod_mask, sim.T, positive_mask.T, logit_scale, generator)
