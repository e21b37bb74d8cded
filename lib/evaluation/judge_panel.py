"""Score generated images with every judge at once: the evaluation panel of the generation tables.

One object loads what the ``judges`` stage trained and cached, then scores a batch of generated
images the same way for every table (M6-Fashion Tables 2-4, MoVQ Tables 2-3, Muse Table 1,
UniFashion Table 3):

- FID / KID (and optionally precision/recall) on the real FID Inception network against the cached
  statistics of the first ``fid_n`` real test images (:func:`lib.metrics.fid_kid`);
- the **classifier score**: the Inception Score formula on our domain classifier's category
  probabilities (IS itself needs the full Inception weights, which are not available offline: the
  tables say so);
- **CLIP-score**: cosine of the in-domain contrastive judge (own image encoder + frozen MiniLM),
  standing in for CLIP (no CLIP weights offline; a local open_clip checkpoint can replace it);
- **attribute accuracy**: the domain classifier's category / colour / pattern predictions against
  the attributes the prompt (or the composed query's target) asked for.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from lib.evaluation import uncertainty
from lib.images import to_uint8_chw
from lib.io import AtelierInputError
from lib.judges.classifier import load_classifier
from lib.judges.contrastive import clip_score, load_judge
from lib.metrics import attribute_accuracy, classifier_score_splits, fid_kid, inception_features, reference_stats
from lib.store import artifacts_dir
from lib.text.encoder import shared_encoder

ATTRIBUTES = ("category", "colour", "pattern")

IMPLEMENTATIONS = {
    "fid": "lib.metrics.image_quality.fid_kid: FID/KID on torch-fidelity's inception-v3-compat (real FID Inception weights) "
           "against the cached statistics of the first fid_n real test images",
    "classifier_score": "lib.metrics.domain.classifier_score_splits: Inception Score formula on the domain classifier's "
                        "category probabilities (stand-in for IS: full Inception weights are unavailable offline)",
    "clip_score": "lib.judges.contrastive.clip_score: cosine of the in-domain contrastive judge (stand-in for CLIP)",
    "attribute_accuracy": "lib.metrics.domain.attribute_accuracy: domain classifier predictions vs the requested attributes",
}
STAND_INS = ("IS -> classifier score (Inception Score formula on our domain classifier's category probabilities); "
             "CLIP-score -> in-domain contrastive judge (frozen MiniLM text side); images are colourised "
             "Fashion-MNIST 32x32 standing in for M2C-Fashion / CC3M / Fashion-IQ; a text-dropped row (guidance "
             "training and the unconditional branch) attends to one learned null-text token where Muse Sec. 2.7 lets "
             "its attention reduce to image-token self-attention")


class JudgePanel:
    """The judges of one profile, loaded once. ``score(...)`` returns one flat dict of metrics."""

    def __init__(self, params: Mapping[str, Any], device: str = "cpu", progress: bool = False):
        jp = params["judges"]
        root = artifacts_dir("judges")
        for name in ("classifier.safetensors", "contrastive.safetensors"):
            if not (root / name).is_file():
                raise AtelierInputError(f"{root / name}: missing; run the judges stage first (dvc repro judges)")
        self.params, self.device, self.progress = params, device, progress
        self.classifier = load_classifier(root / "classifier.safetensors", width=jp["width"], device=device).eval()
        self.judge = load_judge(root / "contrastive.safetensors", width=jp["width"], embed_dim=jp["embed_dim"],
                                device=device).eval()
        self._reference = None

    # -- the real reference set (cached by the judges stage) -------------------------------------
    def reference(self, test_images_u8: np.ndarray):
        """Inception statistics of the first ``judges.fid_n`` real test images (the judges stage's cache)."""
        if self._reference is None:
            n_ref = min(int(self.params["judges"]["fid_n"]), len(test_images_u8))

            def real():
                return torch.from_numpy(np.ascontiguousarray(test_images_u8[:n_ref])).permute(0, 3, 1, 2).contiguous()

            self._reference = reference_stats(real, dataset="atelier-captions", split="test",
                                              profile=self.params["profile"], n=n_ref, progress=self.progress)
        return self._reference

    # -- scores ------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Domain-classifier probabilities per attribute for float images in [-1, 1]."""
        return self.classifier.predict(images.to(self.device))

    @torch.no_grad()
    def clip_scores(self, images: torch.Tensor, pooled_text: torch.Tensor) -> torch.Tensor:
        """Per-image judge cosine against pooled MiniLM text embeddings ``[N, 384]``."""
        return clip_score(self.judge, images.to(self.device), pooled_text.to(self.device)).cpu()

    def score(self, images: torch.Tensor, *, test_images_u8: np.ndarray | None = None,
              targets: Mapping[str, Sequence[int] | torch.Tensor] | None = None,
              pooled_text: torch.Tensor | None = None, fid: bool = True, prc: bool = False,
              splits: int = 10, bootstrap: bool = False) -> dict[str, Any]:
        """Every metric that applies to ``images`` (float ``[N,3,H,W]`` in [-1, 1]).

        ``targets``: requested attributes (``{attr: labels [N]}``, any subset of category / colour /
        pattern) for attribute accuracy; ``pooled_text``: the prompts' pooled MiniLM embeddings for
        CLIP-score; ``test_images_u8``: the real test split for the FID reference (needed if ``fid``).
        ``bootstrap``: also resample the N images ``params.uncertainty.bootstrap_resamples`` times
        (:mod:`lib.evaluation.uncertainty`); the result then has ``"bootstrap": {"FID", "CLIP-score", "acc_joint":
        replicates}`` for what was computed, keyed like the tables' columns, so a claim reads the
        replicates next to the value.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise AtelierInputError(f"JudgePanel.score: images must be [N,3,H,W], got {tuple(images.shape)}")
        n = len(images)
        if bootstrap:
            if "uncertainty" not in self.params:
                raise AtelierInputError("JudgePanel.score: bootstrap=True needs the params' 'uncertainty' section")
            resamples = int(self.params["uncertainty"]["bootstrap_resamples"])
            bootstrap_seed = int(self.params["uncertainty"]["seed"])
        out: dict[str, Any] = {"num_samples": n}
        reps: dict[str, list[float]] = {}
        probs = self.predict(images)
        cs = classifier_score_splits(probs["probs_category"], splits=min(splits, n))
        out["classifier_score"], out["classifier_score_std"] = cs["mean"], cs["std"]
        if targets:
            pred = {a: probs[f"probs_{a}"].argmax(-1) for a in targets}
            truth = {a: torch.as_tensor(np.asarray(v)) for a, v in targets.items()}
            acc = attribute_accuracy(pred, truth)
            out.update({f"acc_{a}": v for a, v in acc["per_attribute"].items()})
            out["acc_joint"] = acc["joint"]
            if bootstrap:
                joint = np.all([(pred[a].cpu() == truth[a]).numpy() for a in targets], axis=0)
                reps["acc_joint"] = uncertainty.replicates(joint, resamples, bootstrap_seed)
        if pooled_text is not None:
            if len(pooled_text) != n:
                raise AtelierInputError(f"JudgePanel.score: {n} images but {len(pooled_text)} text embeddings")
            per_image = self.clip_scores(images, pooled_text)
            out["clip_score"] = float(per_image.mean())
            if bootstrap:
                reps["CLIP-score"] = uncertainty.replicates(per_image.numpy(), resamples, bootstrap_seed)
        if fid:
            if test_images_u8 is None:
                raise AtelierInputError("JudgePanel.score: fid=True needs test_images_u8 (the real reference set)")
            ref = self.reference(test_images_u8)
            # Features once: the point FID and its bootstrap replicates come from the same ones.
            feats = inception_features(to_uint8_chw(images), progress=self.progress, desc="generated")
            f = fid_kid(feats, ref, prc=prc, progress=self.progress)
            if bootstrap:
                reps["FID"] = uncertainty.fid_replicates(feats.numpy(), ref.features, resamples, bootstrap_seed)
            out.update(fid=f["fid"], kid=f["kid_mean"], kid_std=f["kid_std"])
            if prc:
                out.update(precision=f["precision"], recall=f["recall"])
            out["fid_provenance"] = {k: f[k] for k in ("implementation", "feature_network", "feature_weights_sha256",
                                                       "num_samples", "fid_method", "seed", "reference_cache") if k in f}
        if bootstrap:
            out["bootstrap"] = {k: uncertainty.compact(v) for k, v in reps.items()}
            out["bootstrap_provenance"] = {"method": uncertainty.METHOD, "resamples": resamples,
                                           "seed": int(bootstrap_seed), "num_samples": n}
        return out


def region_psnr(edited: torch.Tensor, source: torch.Tensor, region: torch.Tensor) -> float:
    """PSNR (dB, images mapped to [0, 1]) over the pixels of ``region`` only, per image then averaged:
    how faithfully an edit kept what it was told to keep (issue 17: "the preserved region's PSNR
    against the source").

    ``edited`` / ``source``: float ``[N, 3, h, w]`` in [-1, 1]; ``region``: bool ``[N, H, W]`` token
    cells (or ``[H, W]`` for all images), upsampled to pixels by nearest neighbour. An image whose
    region is identical scores 100 dB (MSE floored at 1e-10), so one exact copy cannot make the mean
    infinite; an empty region is an error.
    """
    if edited.shape != source.shape or edited.ndim != 4:
        raise AtelierInputError(f"region_psnr: images of shape {tuple(edited.shape)} and {tuple(source.shape)}")
    region = torch.as_tensor(region, dtype=torch.bool)
    if region.ndim == 2:
        region = region[None].expand(edited.shape[0], -1, -1)
    if region.ndim != 3 or region.shape[0] != edited.shape[0]:
        raise AtelierInputError(f"region_psnr: region must be [N, H, W] or [H, W] cells, got {tuple(region.shape)}")
    mask = torch.nn.functional.interpolate(region[:, None].float(), size=edited.shape[-2:], mode="nearest")
    counts = mask.sum(dim=(1, 2, 3)) * edited.shape[1]
    if bool((counts == 0).any()):
        raise AtelierInputError("region_psnr: an image has an empty region")
    err = (((edited.float() - source.float()) / 2) ** 2 * mask).sum(dim=(1, 2, 3)) / counts
    return float((10 * torch.log10(1.0 / err.clamp_min(1e-10))).mean())


def attribute_targets(arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """``{attr: labels}`` of the images ``idx`` of a caption-dataset split (the prompts' attributes)."""
    return {a: np.asarray(arrays[a])[idx] for a in ATTRIBUTES}


def pooled_text(texts: Sequence[str]) -> torch.Tensor:
    """Pooled frozen-MiniLM embeddings ``[N, 384]`` of ``texts`` (the CLIP-score text side)."""
    return shared_encoder().encode(list(texts))["pooled"]
