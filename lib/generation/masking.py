"""Training-time masking of token grids: which entries a masked-token model must predict.

Token grids are ``[B, N, C]`` (N = H*W positions in raster order, C channels per position, see
``docs/generation_contract.md``). A mask is a bool tensor of the same shape, True = the entry is
replaced by ``[MASK]`` (id K) and counts in the loss.

- Muse Sec. 2.6 / MaskGIT: a per-example masking rate r = cos(pi/2 * u), u ~ U(0, 1), i.e. the
  truncated arccos density p(r) = 2/pi (1 - r^2)^(-1/2) (mean 2/pi ~ 0.64), and round(r*N*C) entries
  masked at random. MoVQ Sec. 3.2 ("Multichannel token generation"): every channel of every position
  is masked independently, so the entries are drawn over positions *and* channels.
- M6-Fashion Sec. 3.3: four masking strategies with probabilities (0.7, 0.1, 0.1, 0.1): random, all,
  inside random boxes, outside random boxes; and four condition combinations {v,t}, {v}, {t}, {}
  where the visual condition {v} is one or more crops of the target's own token grid.

Every function draws from an explicit ``torch.Generator`` (on the generator's device) so training
can seed each step from its step number (exact resume, :mod:`lib.training`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from lib.io import AtelierInputError
from lib.sampling.mask_schedule import MASK_SCHEDULES

#: M6-Fashion Sec. 3.3 masking strategies, in the paper's order, and their probabilities.
STRATEGIES = ("random", "all", "inside_boxes", "outside_boxes")
STRATEGY_PROBS = (0.7, 0.1, 0.1, 0.1)

#: M6-Fashion Sec. 3.3 condition combinations, in the paper's order: {v,t}, {v}, {t}, {}.
COMBINATIONS = ("visual_text", "visual", "text", "none")
#: The paper prints "0.20, 0.55, 0.20, 0.05" for {v,t}, {v}, {t}, {} -- which gives {v} the most
#: weight -- right after saying that text-only conditioning, the harder task, is forced to "get
#: more attention". The prose reading swaps the two middle numbers ({t}: 0.55, {v}: 0.20) and is
#: our default; the printed order stays available.
COMBINATION_PROBS_PROSE = (0.20, 0.20, 0.55, 0.05)
COMBINATION_PROBS_PRINTED = (0.20, 0.55, 0.20, 0.05)
#: params.yaml's ``condition_mixture`` names (lib.config.CONDITION_MIXTURES) -> probabilities.
COMBINATION_READINGS = {"prose": COMBINATION_PROBS_PROSE, "printed": COMBINATION_PROBS_PRINTED}
_HAS_VISUAL = (True, True, False, False)
_HAS_TEXT = (True, False, True, False)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _probs(probs: Sequence[float], n: int, name: str) -> torch.Tensor:
    p = torch.as_tensor(list(probs), dtype=torch.float64)
    if p.shape != (n,) or bool((p < 0).any()) or not math.isclose(float(p.sum()), 1.0, abs_tol=1e-6):
        raise AtelierInputError(f"{name} must be {n} non-negative numbers summing to 1, got {list(probs)}")
    return p


def mask_rate(u: torch.Tensor) -> torch.Tensor:
    """The cosine schedule r = cos(pi/2 * u) (MaskGIT; Muse Sec. 2.6).

    For u ~ U(0, 1), r has the arccos density p(r) = 2/pi (1 - r^2)^(-1/2) on [0, 1], i.e.
    P(r <= x) = 2/pi * arcsin(x). At sampling time the same function of the step fraction gives the
    share of entries still masked.
    """
    return MASK_SCHEDULES["cosine"](u)


def sample_mask_rates(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[batch]`` masking rates from the arccos distribution (on the generator's device)."""
    u = torch.rand(batch, generator=generator, device=_gen_device(generator))
    return mask_rate(u)


def random_mask(batch: int, n: int, channels: int, generator: torch.Generator | None = None,
                rates: torch.Tensor | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``[batch, n, channels]``: round(r * n * channels) entries (at least one) masked per row.

    ``rates`` ``[batch]`` in [0, 1] defaults to :func:`sample_mask_rates`. Entries are chosen
    uniformly over positions and channels independently (MoVQ Sec. 3.2).
    """
    if batch < 1 or n < 1 or channels < 1:
        raise AtelierInputError(f"random_mask: batch, n, channels must be >= 1, got {batch}, {n}, {channels}")
    gdev = _gen_device(generator)
    if rates is None:
        rates = sample_mask_rates(batch, generator)
    rates = torch.as_tensor(rates, dtype=torch.float32, device=gdev)
    if rates.shape != (batch,) or bool(((rates < 0) | (rates > 1)).any()):
        raise AtelierInputError(f"random_mask: rates must be [batch]={batch} values in [0, 1], "
                                f"got {tuple(rates.shape)}")
    total = n * channels
    count = torch.round(rates * total).long().clamp(1, total)
    scores = torch.rand(batch, total, generator=generator, device=gdev)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # a uniformly random permutation per row
    mask = (ranks < count[:, None]).view(batch, n, channels)
    return mask.to(device) if device is not None else mask


def random_boxes(batch: int, height: int, width: int, generator: torch.Generator | None = None,
                 max_boxes: int = 3, max_frac: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """Random axis-aligned boxes on an ``height x width`` grid (M6-Fashion Sec. 3.3: "the number
    of boxes and the box sizes are randomly sampled").

    Returns ``boxes`` long ``[batch, max_boxes, 4]`` as (top, left, box_height, box_width), every
    box inside the grid, and ``active`` bool ``[batch, max_boxes]``: the first k in {1..max_boxes}
    boxes of a row are used. Sides are uniform in [1, max(1, ceil(max_frac * side))].
    """
    if max_boxes < 1 or not 0 < max_frac <= 1:
        raise AtelierInputError(f"random_boxes: max_boxes must be >= 1 and max_frac in (0, 1], "
                                f"got {max_boxes}, {max_frac}")
    gdev = _gen_device(generator)

    def uniform_int(low: torch.Tensor | int, high: torch.Tensor | int) -> torch.Tensor:  # inclusive bounds
        u = torch.rand(batch, max_boxes, generator=generator, device=gdev)
        return (low + torch.floor(u * (torch.as_tensor(high, device=gdev) - low + 1))).long()

    box_h = uniform_int(1, max(1, math.ceil(max_frac * height)))
    box_w = uniform_int(1, max(1, math.ceil(max_frac * width)))
    top = uniform_int(0, height - box_h)
    left = uniform_int(0, width - box_w)
    count = torch.randint(1, max_boxes + 1, (batch,), generator=generator, device=gdev)
    active = torch.arange(max_boxes, device=gdev)[None, :] < count[:, None]
    return torch.stack([top, left, box_h, box_w], dim=-1), active


def boxes_to_grid(boxes: torch.Tensor, active: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bool ``[batch, max_boxes, height, width]``: cell (i, j) lies in box k (and box k is active)."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    top, left, bh, bw = boxes.unbind(-1)
    in_rows = (rows >= top[..., None]) & (rows < (top + bh)[..., None])
    in_cols = (cols >= left[..., None]) & (cols < (left + bw)[..., None])
    return in_rows[..., :, None] & in_cols[..., None, :] & active[..., None, None]


def m6_mask(batch: int, height: int, width: int, channels: int, generator: torch.Generator | None = None,
            probs: Sequence[float] = STRATEGY_PROBS, max_boxes: int = 3,
            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """M6-Fashion Sec. 3.3 masks: ``(mask [batch, H*W, C] bool, strategy [batch] long)``.

    ``strategy`` indexes :data:`STRATEGIES`: 0 random (arccos rate over positions and channels,
    as :func:`random_mask`), 1 all entries, 2 all channels of the positions inside 1..max_boxes
    random boxes, 3 those outside them. A row whose boxes happen to cover the whole grid under
    strategy 3 would mask nothing (no loss); it masks one random position instead.
    """
    p = _probs(probs, len(STRATEGIES), "m6_mask probs")
    gdev = _gen_device(generator)
    n = height * width
    strategy = torch.multinomial(p.float().to(gdev), batch, replacement=True, generator=generator)
    rand = random_mask(batch, n, channels, generator)
    boxes, active = random_boxes(batch, height, width, generator, max_boxes=max_boxes)
    inside = boxes_to_grid(boxes, active, height, width).any(1).view(batch, n)
    outside = ~inside
    fallback = torch.randint(0, n, (batch,), generator=generator, device=gdev)
    empty = ~outside.any(1)
    outside[empty, fallback[empty]] = True
    per_position = torch.where((strategy == 2)[:, None], inside, outside)
    mask = torch.where((strategy == 0)[:, None, None], rand, per_position[..., None].expand(batch, n, channels))
    mask = mask | (strategy == 1)[:, None, None]
    return (mask.to(device), strategy.to(device)) if device is not None else (mask, strategy)


def sample_combinations(batch: int, probs: Sequence[float] = COMBINATION_PROBS_PROSE,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """M6-Fashion Sec. 3.3 condition combinations: ``(use_visual [batch] bool, use_text [batch] bool)``.

    ``probs`` are for :data:`COMBINATIONS` = ({v,t}, {v}, {t}, {}). The default is the prose reading
    (text-only gets 0.55) -- see :data:`COMBINATION_PROBS_PROSE` for the ambiguity with the printed
    numbers, which are :data:`COMBINATION_PROBS_PRINTED`.
    """
    p = _probs(probs, len(COMBINATIONS), "sample_combinations probs")
    gdev = _gen_device(generator)
    combo = torch.multinomial(p.float().to(gdev), batch, replacement=True, generator=generator)
    has_visual = torch.tensor(_HAS_VISUAL, device=gdev)
    has_text = torch.tensor(_HAS_TEXT, device=gdev)
    return has_visual[combo], has_text[combo]


def visual_crops(tokens: torch.Tensor, height: int, width: int, generator: torch.Generator | None = None,
                 max_crops: int = 2, max_tokens: int = 8
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Visual conditions cropped from the targets' own grids (M6-Fashion Sec. 3.3: "we crop one or
    multiple regions of a target image to construct {v}").

    ``tokens`` ``[B, H*W, C]``. Each row gets 1..max_crops rectangular crops, each of at most
    ``max_tokens // crops`` positions (so nothing is truncated). Returns, padded to ``max_tokens``:
    ``visual_tokens [B, Lv, C]`` long (0 at padding), ``positions [B, Lv]`` (raster index in the
    source grid; 0 at padding), ``valid [B, Lv]`` bool, ``segment [B, Lv]`` (crop index, for
    [SEP]). Within a crop positions are in raster order; crops follow each other.
    """
    if tokens.dim() != 3 or tokens.shape[1] != height * width:
        raise AtelierInputError(f"visual_crops: tokens must be [B, {height}*{width}, C], got {tuple(tokens.shape)}")
    if max_crops < 1 or max_tokens < max_crops:
        raise AtelierInputError(f"visual_crops: need max_crops >= 1 and max_tokens >= max_crops, "
                                f"got {max_crops}, {max_tokens}")
    batch, n, channels = tokens.shape
    gdev = _gen_device(generator)
    count = torch.randint(1, max_crops + 1, (batch,), generator=generator, device=gdev)
    budget = max_tokens // count  # positions per crop
    u = torch.rand(batch, max_crops, 4, generator=generator, device=gdev)
    box_h = 1 + torch.floor(u[..., 0] * torch.clamp(budget, max=height)[:, None]).long()
    box_w_max = torch.clamp(budget[:, None] // box_h, min=1, max=width)
    box_w = 1 + torch.floor(u[..., 1] * box_w_max).long()
    top = torch.floor(u[..., 2] * (height - box_h + 1)).long()
    left = torch.floor(u[..., 3] * (width - box_w + 1)).long()
    active = torch.arange(max_crops, device=gdev)[None, :] < count[:, None]
    cells = boxes_to_grid(torch.stack([top, left, box_h, box_w], -1), active, height, width).view(batch, max_crops * n)
    # Sort "crop-major, raster-minor" keys of the chosen cells first; unchosen cells sort last.
    keys = torch.arange(max_crops * n, device=gdev).expand(batch, -1)
    keys = torch.where(cells, keys, keys + max_crops * n)
    if keys.shape[1] < max_tokens:
        keys = torch.cat([keys, torch.full((batch, max_tokens - keys.shape[1]), 2 * max_crops * n, device=gdev)], 1)
    chosen = keys.sort(dim=1).values[:, :max_tokens]
    valid = chosen < max_crops * n
    flat = torch.where(valid, chosen, torch.zeros_like(chosen))
    segment, positions = (flat // n).to(tokens.device), (flat % n).to(tokens.device)
    valid = valid.to(tokens.device)
    gathered = tokens.gather(1, positions[..., None].expand(batch, max_tokens, channels))
    visual = torch.where(valid[..., None], gathered, torch.zeros_like(gathered))
    return visual, positions, valid, segment


def condition_mixture(entry: Mapping[str, Any]) -> tuple[float, ...]:
    """The {v,t}, {v}, {t}, {} probabilities an m6 entry's ``condition_mixture`` names (M6-Fashion Sec. 3.3)."""
    return COMBINATION_READINGS[entry["condition_mixture"]]
