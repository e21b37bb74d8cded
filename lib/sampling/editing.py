"""Editing tasks as (tokens, known) pairs for the schedulers, plus Muse's mask-free editing.

Every builder takes token grids ``[B, N, C]`` (N = H*W raster positions, ``grid_size=(H, W)``;
None means a square grid) and returns ``(tokens, known)``: the grid to start from and the bool mask
of the entries a scheduler must keep (M6-Fashion Sec. 3.2 preservation condition p: "1 means that
the token is known while 0 means the token needs to be predicted"). The scheduler then generates the
unknown entries with whatever ``logits_fn`` the caller passes -- a text-conditioned one for
text-guided in/out-painting (Muse Sec. 3.3.1), an unconditional one otherwise. With ``mask_id``
the unknown entries of the returned tokens hold it (for display; ``init_state`` masks them anyway).

Boxes are ``(top, left, box_height, box_width)`` in token cells, as in
:mod:`lib.generation.masking`. Regions are a box, a list of boxes, or a bool tensor ``[N]``,
``[H, W]`` or ``[B, N]`` (True = inside).

- :func:`inpaint` / :func:`outpaint`: Muse Sec. 3.3.1, M6-Fashion Sec. 4.2 task (5).
- :func:`paste_region`: M6-Fashion local editing (Sec. 4.2 task 3) via the preservation signal:
  the reference's tokens are pasted and kept, a ring of ``harmonize`` cells around the paste is
  re-generated so the seam is harmonised. (The paper's other route -- the reference crop as visual
  condition v -- belongs to the model's condition, not to the sampler.)
- :func:`style_mix`: M6-Fashion style mixing (Sec. 4.2 task 6) on the spatial style tokens: b's
  tokens inside a region (optionally only some channels, e.g. a subset of the PQ groups) over a, the
  boundary ring re-generated.
- :func:`mask_free_edit`: Muse Sec. 3.3.2.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from lib.io import AtelierInputError
from lib.sampling.autoregressive import filter_logits
from lib.sampling.base import check_nonneg, check_steps, sample_categorical, select_top

__all__ = ["box_mask", "blank_grid", "inpaint", "outpaint", "boundary_ring", "paste_region", "style_mix",
           "mask_free_edit"]

Box = Sequence[int]


def _check_grid(tokens: Tensor, name: str = "tokens") -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.dtype.is_floating_point:
        raise AtelierInputError(f"{name} must be an integer [B, N, C] tensor, got "
                                f"{tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}")


def _grid_size(n: int, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    if grid_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise AtelierInputError(f"grid_size must be given for a non-square grid of N={n} positions")
        return side, side
    h, w = (int(v) for v in grid_size)
    if h < 1 or w < 1 or h * w != n:
        raise AtelierInputError(f"grid_size={tuple(grid_size)} must multiply to N={n}")
    return h, w


def _check_box(box: Box, height: int, width: int, name: str) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise AtelierInputError(f"{name} must be (top, left, box_height, box_width), got {box!r}")
    top, left, bh, bw = (int(v) for v in box)
    if bh < 1 or bw < 1 or top < 0 or left < 0 or top + bh > height or left + bw > width:
        raise AtelierInputError(f"{name}={tuple(box)} must be a non-empty (top, left, box_height, box_width) box "
                                f"inside the {height}x{width} grid")
    return top, left, bh, bw


def box_mask(height: int, width: int, boxes: Box | Sequence[Box], device=None) -> Tensor:
    """Bool ``[H*W]`` (raster order): True inside any of ``boxes`` (one box or a list of boxes)."""
    if isinstance(boxes, Tensor):
        boxes = boxes.tolist()
    if len(boxes) and not isinstance(boxes[0], (Sequence, Tensor)):
        boxes = [boxes]
    grid = torch.zeros(height, width, dtype=torch.bool, device=device)
    for i, box in enumerate(boxes):
        top, left, bh, bw = _check_box(box, height, width, f"boxes[{i}]")
        grid[top:top + bh, left:left + bw] = True
    return grid.flatten()


def blank_grid(batch_size: int, num_positions: int, channels: int, mask_id: int, device=None) -> tuple[Tensor, Tensor]:
    """(tokens all ``mask_id``, known all False) ``[B, N, C]``: unconditional / text-to-image generation."""
    for name, v in (("batch_size", batch_size), ("num_positions", num_positions), ("channels", channels)):
        check_steps(v, name)
    shape = (batch_size, num_positions, channels)
    return (torch.full(shape, mask_id, dtype=torch.long, device=device),
            torch.zeros(shape, dtype=torch.bool, device=device))


def _region(region, tokens: Tensor, grid_size, name: str) -> Tensor:
    """Bool ``[B, N]`` from a box / list of boxes / bool tensor."""
    b, n, _ = tokens.shape
    h, w = _grid_size(n, grid_size)
    if not isinstance(region, Tensor):
        return box_mask(h, w, region, device=tokens.device)[None].expand(b, n)
    if region.dtype != torch.bool:
        raise AtelierInputError(f"{name} must be a bool tensor or box(es), got dtype {region.dtype}")
    region = region.to(tokens.device)
    if region.shape == (h, w):
        region = region.flatten()
    if region.shape == (n,):
        return region[None].expand(b, n)
    if region.shape == (b, n):
        return region
    raise AtelierInputError(f"{name} must have shape [N]={n}, [H, W]={(h, w)} or [B, N]={(b, n)}, "
                            f"got {tuple(region.shape)}")


def _channels(channels, c: int, device) -> Tensor:
    """Bool ``[C]``: the selected channels (None = all)."""
    if channels is None:
        return torch.ones(c, dtype=torch.bool, device=device)
    sel = torch.zeros(c, dtype=torch.bool, device=device)
    idx = [int(v) for v in channels]
    if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= c:
        raise AtelierInputError(f"channels must be distinct indices in [0, C={c}), got {list(channels)!r}")
    sel[idx] = True
    return sel


def _output(tokens: Tensor, known: Tensor, mask_id: int | None) -> tuple[Tensor, Tensor]:
    tokens = tokens.clone()
    if mask_id is not None:
        tokens[~known] = mask_id
    return tokens, known


def inpaint(tokens: Tensor, region, grid_size=None, mask_id: int | None = None) -> tuple[Tensor, Tensor]:
    """Re-generate every channel inside ``region``; everything outside is known (Muse Sec. 3.3.1)."""
    _check_grid(tokens)
    inside = _region(region, tokens, grid_size, "region")
    known = (~inside)[..., None].expand(tokens.shape).clone()
    return _output(tokens, known, mask_id)


def outpaint(tokens: Tensor, keep_region, grid_size=None, mask_id: int | None = None) -> tuple[Tensor, Tensor]:
    """Keep ``keep_region``, re-generate everything outside it (Muse Sec. 3.3.1)."""
    _check_grid(tokens)
    keep = _region(keep_region, tokens, grid_size, "keep_region")
    known = keep[..., None].expand(tokens.shape).clone()
    return _output(tokens, known, mask_id)


def boundary_ring(region: Tensor, height: int, width: int, width_cells: int) -> Tensor:
    """Bool like ``region [B, H*W]``: cells outside ``region`` within Chebyshev distance ``width_cells``
    of it (a square dilation minus the region itself), clipped at the grid border."""
    if isinstance(width_cells, bool) or not isinstance(width_cells, int) or width_cells < 0:
        raise AtelierInputError(f"harmonize must be an integer >= 0 (ring width in cells), got {width_cells!r}")
    if width_cells == 0:
        return torch.zeros_like(region)
    grid = region.view(-1, 1, height, width).float()
    k = 2 * width_cells + 1
    dilated = F.max_pool2d(grid, kernel_size=k, stride=1, padding=width_cells) > 0
    return dilated.view_as(region) & ~region


def paste_region(target: Tensor, reference: Tensor, src_box: Box, dst_box: Box, grid_size=None,
                 harmonize: int = 1, mask_id: int | None = None) -> tuple[Tensor, Tensor]:
    """M6-Fashion local editing: paste ``reference``'s tokens in ``src_box`` into ``target`` at
    ``dst_box`` (same box size), keep them and the rest of ``target`` known, and mark the ring of
    ``harmonize`` cells around ``dst_box`` unknown (every channel) so the seam is re-generated.
    ``reference`` is ``[B, N, C]`` or ``[1, N, C]`` (one reference for every row)."""
    _check_grid(target, "target")
    _check_grid(reference, "reference")
    b, n, c = target.shape
    if reference.shape[1:] != target.shape[1:] or reference.shape[0] not in (1, b):
        raise AtelierInputError(f"reference must have shape [B or 1, N, C] matching target {tuple(target.shape)}, "
                                f"got {tuple(reference.shape)}")
    h, w = _grid_size(n, grid_size)
    st, sl, sh, sw = _check_box(src_box, h, w, "src_box")
    dt, dl, dh, dw = _check_box(dst_box, h, w, "dst_box")
    if (sh, sw) != (dh, dw):
        raise AtelierInputError(f"src_box size {(sh, sw)} must equal dst_box size {(dh, dw)}")
    out = target.clone().view(b, h, w, c)
    ref = reference.expand(b, n, c).reshape(b, h, w, c)
    out[:, dt:dt + dh, dl:dl + dw] = ref[:, st:st + sh, sl:sl + sw].to(out.dtype)
    pasted = box_mask(h, w, dst_box, device=target.device)[None].expand(b, n)
    ring = boundary_ring(pasted, h, w, harmonize)
    known = (~ring)[..., None].expand(b, n, c).clone()
    return _output(out.view(b, n, c), known, mask_id)


def style_mix(a: Tensor, b: Tensor, region=None, channels: Sequence[int] | None = None, grid_size=None,
              harmonize: int = 1, mask_id: int | None = None) -> tuple[Tensor, Tensor]:
    """M6-Fashion style mixing: ``b``'s tokens inside ``region`` (None = whole grid) and in
    ``channels`` (None = all; e.g. a subset of PQ groups) over ``a``; in those channels the ring of
    ``harmonize`` cells around the region is unknown (re-generated), everything else known."""
    _check_grid(a, "a")
    _check_grid(b, "b")
    if a.shape != b.shape:
        raise AtelierInputError(f"b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    bsz, n, c = a.shape
    h, w = _grid_size(n, grid_size)
    inside = (torch.ones(bsz, n, dtype=torch.bool, device=a.device) if region is None
              else _region(region, a, (h, w), "region"))
    sel = _channels(channels, c, a.device)
    take_b = inside[..., None] & sel
    out = torch.where(take_b, b.to(a.dtype), a)
    ring = boundary_ring(inside, h, w, harmonize)
    known = ~(ring[..., None] & sel)
    return _output(out, known, mask_id)


def mask_free_edit(logits_fn: Callable[[Tensor], Tensor], tokens: Tensor, num_iters: int = 100, *,
                   mask_id: int, fraction: float = 0.08, top_k: int | None = 3, temperature: float = 1.0,
                   known: Tensor | None = None, generator: torch.Generator | None = None,
                   progress: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Muse Sec. 3.3.2 zero-shot mask-free editing; returns (final tokens, ``num_iters`` frames).

    Every iteration masks a uniformly random subset of round(fraction * E) of the E editable
    entries of each row (at least one; E = N*C minus ``known``), calls ``logits_fn`` on the masked
    grid -- conditioned on the editing prompt, typically a guided one (Muse: guidance scale 4) -- and
    re-samples those entries from the top-k of the logits (Muse: 8% per iteration, 100 iterations,
    k = 3, "to prevent the process from diverging too much from the input"). The other entries are
    untouched, so each iteration changes at most that many entries. Frames are the grid after every
    iteration (Muse Fig. 12 lets the user pick an intermediate one). A ``logits_fn`` with
    ``set_step`` is told the iteration.
    """
    _check_grid(tokens)
    check_steps(num_iters, "num_iters")
    frac = check_nonneg(fraction, "fraction")
    if not 0 < frac <= 1:
        raise AtelierInputError(f"fraction must be in (0, 1], got {fraction!r}")
    temperature = check_nonneg(temperature, "temperature")
    filter_logits(torch.zeros(1, 2), top_k, None)  # validates top_k
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 1:
        raise AtelierInputError(f"mask_id must be an integer >= 1 (the codebook size K), got {mask_id!r}")
    cur = tokens.long().clone()
    if int(cur.min()) < 0 or int(cur.max()) >= mask_id:
        raise AtelierInputError(f"tokens must lie in [0, mask_id={mask_id}) (a complete grid to edit)")
    if known is None:
        known = torch.zeros_like(cur, dtype=torch.bool)
    if not isinstance(known, Tensor) or known.dtype != torch.bool or known.shape != cur.shape:
        raise AtelierInputError(f"known must be a bool tensor of shape {tuple(cur.shape)}")
    editable = ~known.to(cur.device)
    bsz = cur.shape[0]
    n_edit = editable.flatten(1).sum(1)
    count = torch.where(n_edit > 0, torch.floor(n_edit.double() * frac + 0.5).long().clamp(min=1), n_edit)
    set_step = getattr(logits_fn, "set_step", None)
    frames: list[Tensor] = []
    with torch.no_grad():
        for i in tqdm(range(num_iters), disable=not progress, desc="mask-free edit", mininterval=2):
            u = torch.rand(cur.shape, generator=generator, device=cur.device)
            scores = torch.where(editable, u, torch.full_like(u, -1.0))
            chosen = select_top(scores.view(bsz, -1), count).view_as(cur) & editable
            if callable(set_step):
                set_step(i)
            logits = logits_fn(torch.where(chosen, torch.full_like(cur, mask_id), cur))
            if tuple(logits.shape) != (*cur.shape, mask_id):
                raise AtelierInputError(f"logits_fn must return [B, N, C, K] = {(*cur.shape, mask_id)}, "
                                        f"got {tuple(logits.shape)}")
            sub = filter_logits(logits[chosen].float(), top_k, None)
            cur = cur.clone()
            cur[chosen] = sample_categorical(sub, temperature, generator)
            frames.append(cur.clone())
    return cur, frames
