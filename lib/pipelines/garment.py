"""Inference in three lines: a trained generator, prompts in, uint8 images out.

    from lib.pipelines.garment import GarmentPipeline
    pipe = GarmentPipeline.from_trained("m6")              # checkpoints of the profile in params.yaml
    images = pipe.text_to_image(["a red dotted dress", "a blue striped sneaker"], seed=0)
    pipe.save(images, "garments.png")

``images`` is ``uint8 [n, H, W, 3]``. :meth:`GarmentPipeline.inpaint` re-generates a pixel box of
given images from a prompt (M6-Fashion Sec. 3.4 / Muse Sec. 3.4 zero-shot in-painting);
:meth:`GarmentPipeline.style_mix` puts one image's PQ style groups into another (M6-Fashion Sec. 3.4 vi). The pieces
are the ones the notebooks drive: the generator and its tokenizer from ``lib.stages.generator``, a
scheduler from ``lib.sampling`` (MaskGIT, M6-Fashion's SMART, or the autoregressive baseline),
Muse's classifier-free guidance with a linearly increasing scale and an optional negative prompt
(Muse Sec. 2.7). :class:`ComposedSearch` is UniFashion's composed image retrieval: a reference
image and a modification text in, the best gallery images out (Sec. 3.2, Eq. 9-10). This module only
wires them; it holds no model code.
"""

from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

import lib.config as lib_params
from lib.figures import image_grid
from lib.generation.autoregressive import ARTransformer
from lib.images import to_uint8_hwc
from lib.io import AtelierInputError, atomic_write_bytes
from lib.pipelines import unifashion as UF
from lib.pipelines.generators import load_trained
from lib.pipelines.sampling import encode_prompts, generate, make_scheduler, sample_masked
from lib.pipelines.tokenizers import decode_tokens, tokenize_images
from lib.retrieval.evaluate import composed_similarity, embed_composed, embed_images
from lib.retrieval.features import extract_features
from lib.sampling import LinearGuidanceSchedule, inpaint as inpaint_tokens, style_mix as mix_tokens

__all__ = ["ComposedSearch", "GarmentPipeline"]


class GarmentPipeline:
    """A trained token generator with the tokenizer that decodes its tokens and the sampler settings
    (``generation.sampling`` of params.yaml)."""

    def __init__(self, model, tokenizer, decoder=None, sampling: Mapping[str, Any] | None = None, *,
                 name: str = "generator", encode: Callable[[list[str]], Any] | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.decoder = decoder if decoder is not None else tokenizer
        self.sampling = dict(sampling or {})
        self.name = name
        self.encode = encode or encode_prompts
        self.autoregressive = isinstance(model, ARTransformer)

    @classmethod
    def from_trained(cls, name: str = "m6", profile: str | None = None, device: str = "cpu") -> "GarmentPipeline":
        """The generator ``name`` of ``generation.models`` as the stages trained it (``profile``:
        params.yaml's by default). Raises one error naming the checkpoint when it is not trained."""
        P = lib_params.load(profile)
        model, tok, dec = load_trained(P, name, device)
        return cls(model, tok, dec, P["generation"]["sampling"], name=name)

    # -- helpers ------------------------------------------------------------------------------
    def _prompts(self, prompts: Sequence[str], what: str = "prompts") -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise AtelierInputError(f"GarmentPipeline: {what} must be a non-empty list of non-empty strings")
        return prompts

    @staticmethod
    def _images(images, task: str, what: str = "images") -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or not len(images):
            raise AtelierInputError(f"GarmentPipeline.{task}: {what} must be uint8 [n, H, W, 3], got "
                                    f"{images.dtype} {list(images.shape)}")
        return images

    def _cells(self, box, shape, task: str = "style_mix") -> tuple[int, int, int, int]:
        """A pixel box ``(top, left, height, width)`` -> the token cells covering it (widened to whole
        cells of the tokenizer's downsampling factor)."""
        H, W = self.tokenizer.token_shape[:2]
        fy, fx = shape[1] // H, shape[2] // W
        top, left, height, width = (int(v) for v in box)
        if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= shape[1]
                and left + width <= shape[2]):
            raise AtelierInputError(f"GarmentPipeline.{task}: box {tuple(box)} (top, left, height, width) is not "
                                    f"inside the {shape[1]}x{shape[2]} images")
        t0, l0 = top // fy, left // fx
        return (t0, l0, -(-(top + height) // fy) - t0, -(-(left + width) // fx) - l0)

    def _sampler(self, sampler: str | None) -> str:
        if self.autoregressive:
            if sampler not in (None, "autoregressive"):
                raise AtelierInputError(f"GarmentPipeline: {self.name} is autoregressive; sampler must be "
                                        f"'autoregressive', got {sampler!r}")
            return "autoregressive"
        sampler = sampler or "smart"
        if sampler not in ("maskgit", "smart"):
            raise AtelierInputError(f"GarmentPipeline: sampler must be 'maskgit' or 'smart' for {self.name}, "
                                    f"got {sampler!r}")
        return sampler

    def _guidance(self, sampler: str, guidance: float | None):
        """Muse Sec. 2.7: the scale rises linearly from 0 to ``guidance`` over the decoding steps."""
        if not guidance:
            return 0.0
        if sampler == "autoregressive":
            raise AtelierInputError("GarmentPipeline: guidance is for the masked samplers (Muse CFG)")
        steps = int(self.sampling.get("maskgit_steps", 12)) if sampler == "maskgit" else int(self.sampling.get("smart_T", 10)) + 1
        return LinearGuidanceSchedule(float(guidance), steps)

    # -- tasks -------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_to_image(self, prompts: Sequence[str], *, sampler: str | None = None, guidance: float | None = None,
                      negative_prompts: Sequence[str] | None = None, seed: int = 0) -> np.ndarray:
        """One image per prompt. ``sampler``: ``smart`` (default), ``maskgit``, or ``autoregressive``
        for the AR baseline; ``guidance``: the final classifier-free guidance scale (default none);
        ``negative_prompts`` replace the unconditional branch of guidance (one per prompt)."""
        prompts = self._prompts(prompts)
        sampler = self._sampler(sampler)
        negative = None
        if negative_prompts is not None:
            negative_prompts = self._prompts(negative_prompts, "negative_prompts")
            if len(negative_prompts) != len(prompts):
                raise AtelierInputError(f"GarmentPipeline: {len(negative_prompts)} negative_prompts for "
                                        f"{len(prompts)} prompts (give one per prompt)")
            if not guidance:
                raise AtelierInputError("GarmentPipeline: negative_prompts act through guidance; set guidance > 0")
            negative = self.encode(negative_prompts)
        out = generate(self.model, self.decoder, self.encode(prompts), len(prompts), sampler, self.sampling,
                       guidance=self._guidance(sampler, guidance), negative=negative, seed=seed)
        return to_uint8_hwc(out["images"])

    @torch.no_grad()
    def inpaint(self, images: np.ndarray, box: tuple[int, int, int, int], prompts: Sequence[str], *,
                sampler: str | None = None, seed: int = 0) -> np.ndarray:
        """Re-generate the pixel box ``(top, left, height, width)`` of ``images`` (``uint8 [n, H, W, 3]``)
        from ``prompts``; the tokens outside the box are kept. The box is widened to whole token cells
        (the tokenizer's downsampling factor)."""
        if self.autoregressive:
            raise AtelierInputError(f"GarmentPipeline: {self.name} is autoregressive; in-painting needs a masked generator")
        images = self._images(images, "inpaint")
        prompts = self._prompts(prompts)
        if len(prompts) != len(images):
            raise AtelierInputError(f"GarmentPipeline.inpaint: {len(prompts)} prompts for {len(images)} images")
        H, W = self.tokenizer.token_shape[:2]
        cells = self._cells(box, images.shape, "inpaint")
        grid = tokenize_images(self.tokenizer, images)
        tokens, known = inpaint_tokens(grid, cells, (H, W), mask_id=self.model.config.mask_id)
        sampler = self._sampler(sampler)
        out = sample_masked(self.model, self.encode(prompts), len(images), lambda: make_scheduler(sampler, self.sampling),
                            tokens=tokens, known=known, seed=seed)
        return to_uint8_hwc(decode_tokens(self.decoder, out["tokens"]))

    @torch.no_grad()
    def style_mix(self, images_a: np.ndarray, images_b: np.ndarray, *, groups: Sequence[int] | None = None,
                  box: tuple[int, int, int, int] | None = None, prompts: Sequence[str] | None = None,
                  sampler: str | None = None, seed: int = 0) -> np.ndarray:
        """M6-Fashion style mixing (Sec. 3.4 vi): ``images_b``'s tokens in the PQ ``groups`` (token
        channels; None = all) inside the pixel ``box`` (None = the whole image) over ``images_a``.

        The ring of one token cell around the box is re-generated in those groups (conditioned on
        ``prompts``, or on no text when None), so the pasted part blends in; everything else is kept.
        Which attribute a group carries is learned, not fixed: notebook 05 measures it."""
        if self.autoregressive:
            raise AtelierInputError(f"GarmentPipeline: {self.name} is autoregressive; style mixing needs a masked generator")
        a = self._images(images_a, "style_mix", "images_a")
        b = self._images(images_b, "style_mix", "images_b")
        if a.shape != b.shape:
            raise AtelierInputError(f"GarmentPipeline.style_mix: images_b {list(b.shape)} must have the shape of "
                                    f"images_a {list(a.shape)}")
        H, W, C = self.tokenizer.token_shape
        if groups is not None:
            groups = [int(g) for g in groups]
            if not groups or any(not 0 <= g < C for g in groups):
                raise AtelierInputError(f"GarmentPipeline.style_mix: groups {groups} must be token channels in "
                                        f"[0, {C}) of {self.name}'s tokenizer ({C} PQ groups)")
        region = None if box is None else self._cells(box, a.shape)
        cond = None
        if prompts is not None:
            prompts = self._prompts(prompts)
            if len(prompts) != len(a):
                raise AtelierInputError(f"GarmentPipeline.style_mix: {len(prompts)} prompts for {len(a)} images")
            cond = self.encode(prompts)

        tokens, known = mix_tokens(tokenize_images(self.tokenizer, a), tokenize_images(self.tokenizer, b),
                                   region=region, channels=groups, grid_size=(H, W), harmonize=1,
                                   mask_id=self.model.config.mask_id)
        sampler = self._sampler(sampler)
        out = sample_masked(self.model, cond, len(a), lambda: make_scheduler(sampler, self.sampling),
                            tokens=tokens, known=known, seed=seed)
        return to_uint8_hwc(decode_tokens(self.decoder, out["tokens"]))

    @staticmethod
    def save(images: np.ndarray, path: str | Path, columns: int = 8, pad: int = 2) -> Path:
        """Write ``uint8 [n, H, W, 3]`` images as one PNG grid (:func:`lib.figures.image_grid`:
        ``columns`` per row, ``pad`` white pixels between), atomically."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or not len(images):
            raise AtelierInputError(f"GarmentPipeline.save: images must be uint8 [n, H, W, 3], got "
                                    f"{images.dtype} {list(images.shape)}")
        buf = _io.BytesIO()
        Image.fromarray(image_grid(images, ncol=max(1, min(int(columns), len(images))), pad=pad)).save(buf, format="PNG")
        return atomic_write_bytes(Path(path), buf.getvalue())


class ComposedSearch:
    """UniFashion composed image retrieval (Sec. 3.2, Eq. 9-10) over a gallery the caller gives.

        search = ComposedSearch.from_trained()            # the phase-2 Q-Former of the unifashion stages
        search.index(gallery_images)                      # uint8 [G, H, W, 3]
        scores, rows = search(reference_images, ["is red with short sleeves"], k=5)

    A query is the reference image's frozen features and the modification text fused under the
    Q-Former's bidirectional mask; its [CLS] embedding is scored against every gallery image's
    query embeddings by the largest cosine (the ``full`` variant of
    :func:`lib.retrieval.evaluate.composed_similarity`, the one Table 4 reports)."""

    def __init__(self, qformer, extractor, text_encoder, *, batch_size: int = 64):
        self.qformer, self.extractor, self.text_encoder = qformer.eval(), extractor, text_encoder
        self.batch_size = int(batch_size)
        self.gallery: torch.Tensor | None = None

    @classmethod
    def from_trained(cls, phase: str = "phase2", profile: str | None = None, device: str = "cpu") -> "ComposedSearch":
        """The Q-Former of ``phase`` (``phase2``, the final model; ``phase1``) with the frozen image
        feature network and MiniLM text encoder it was trained on (``retrieval`` of params.yaml)."""
        R = lib_params.unifashion_settings(lib_params.load(profile))
        return cls(UF.load_trained(phase, device=device), UF.feature_extractor(R).to(device), UF.modification_encoder(R))

    def _features(self, images, what: str) -> torch.Tensor:
        return extract_features(GarmentPipeline._images(images, "ComposedSearch", what), self.extractor,
                                batch_size=self.batch_size, dtype=torch.float32)

    @torch.no_grad()
    def index(self, images: np.ndarray) -> "ComposedSearch":
        """Embed the gallery ``uint8 [G, H, W, 3]`` (each image: ``[Q, e]`` query embeddings)."""
        self.gallery = embed_images(self.qformer, self._features(images, "gallery images"), self.batch_size)
        return self

    @torch.no_grad()
    def __call__(self, reference_images: np.ndarray, texts: Sequence[str], k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery rows for each (reference image, modification text): ``(scores [n, k],
        rows [n, k])``, best first; scores are cosine similarities."""
        if self.gallery is None:
            raise AtelierInputError("ComposedSearch: no gallery; call index(gallery_images) first")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise AtelierInputError("ComposedSearch: texts must be a non-empty list of non-empty strings")
        feats = self._features(reference_images, "reference_images")
        if len(feats) != len(texts):
            raise AtelierInputError(f"ComposedSearch: {len(texts)} texts for {len(feats)} reference images (one each)")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self.gallery):
            raise AtelierInputError(f"ComposedSearch: k must be an integer in [1, {len(self.gallery)}] (the gallery size), got {k!r}")
        enc = self.text_encoder(texts)
        query = embed_composed(self.qformer, feats, enc["tokens"], enc["mask"], self.batch_size)
        scores, rows = composed_similarity("full", self.gallery, composed=query).topk(k, dim=1)
        return scores.numpy(), rows.numpy()
