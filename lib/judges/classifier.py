"""Domain classifier: category, colour and pattern heads over a shared conv encoder.

It stands in for the ImageNet Inception network whose logits Inception Score needs (unavailable
offline) and gives three things (issue 3): a *classifier score* -- the IS formula
exp(E_x KL(p(y|x) || p(y))) of Salimans et al. 2016 over the category softmax --, a *domain FID* on
its penultimate features, and *attribute accuracy* of generated images against their prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.data.attributes import CATEGORY_NAMES, COLOUR_NAMES, PATTERN_NAMES
from lib.judges.backbone import ConvEncoder, images_to_tensor
from lib.training import ResumableTrainer, arch_of, batch_indices, load_model_weights, lr_factor, set_lr

HEADS = {"category": len(CATEGORY_NAMES), "colour": len(COLOUR_NAMES), "pattern": len(PATTERN_NAMES)}


class DomainClassifier(nn.Module):
    def __init__(self, width: int = 32, feature_dim: int = 256):
        super().__init__()
        self.hparams = {"width": width, "feature_dim": feature_dim}
        self.encoder = ConvEncoder(width, feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in HEADS.items()})

    @property
    def arch(self) -> dict:
        return arch_of("domain_classifier", **self.hparams)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(images)
        return {"features": feats, **{name: head(feats) for name, head in self.heads.items()}}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Penultimate ``features`` and per-head softmax ``probs_<head>`` for float images in [-1, 1]."""
        self.eval()
        device = next(self.parameters()).device
        outs: dict[str, list] = {}
        for i in range(0, len(images), batch_size):
            o = self(images[i:i + batch_size].to(device))
            outs.setdefault("features", []).append(o["features"].cpu())
            for name in HEADS:
                outs.setdefault(f"probs_{name}", []).append(o[name].softmax(-1).cpu())
        return {k: torch.cat(v) for k, v in outs.items()}


def train_classifier(train: dict, ckpt_path: str | Path, *, steps: int, batch_size: int = 128, lr: float = 2e-3,
                     seed: int = 0, width: int = 32, device: str = "cpu", progress: bool = True):
    """Train (or resume) on a caption-dataset split's arrays; returns ``(model, history)``."""
    torch.manual_seed(seed)
    model = DomainClassifier(width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    labels = {k: torch.as_tensor(train[k]) for k in HEADS}

    def step_fn(step: int) -> dict:
        set_lr(opt, lr * lr_factor(step, steps, min(50, steps)))
        idx = batch_indices(len(train["images"]), batch_size, step, seed)
        x = images_to_tensor(train["images"][idx], device)
        # Small random translations: generated images are not pixel-aligned with the training set.
        shift = torch.randint(-2, 3, (2,))
        x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        out = model(x)
        losses = {k: F.cross_entropy(out[k], labels[k][idx].to(device)) for k in HEADS}
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), **{f"loss_{k}": v.item() for k, v in losses.items()}}

    trainer = ResumableTrainer(model, opt, ckpt_path, model.arch, seed, steps, ckpt_every=max(50, steps // 10),
                               desc="domain classifier")
    history = trainer.run(step_fn, progress=progress)
    return model.eval(), history


def load_classifier(ckpt_path: str | Path, width: int = 32, device: str = "cpu") -> DomainClassifier:
    model = DomainClassifier(width)
    return load_model_weights(model, ckpt_path, model.arch).to(device)


def evaluate_classifier(model: DomainClassifier, arrays: dict) -> dict:
    """Held-out accuracy per head and the category confusion matrix (rows: truth, cols: prediction)."""
    pred = model.predict(images_to_tensor(arrays["images"]))
    result = {}
    for name, n in HEADS.items():
        guess = pred[f"probs_{name}"].argmax(-1).numpy()
        truth = np.asarray(arrays[name])
        result[f"accuracy_{name}"] = float((guess == truth).mean())
        if name == "category":
            cm = np.zeros((n, n), dtype=np.int64)
            np.add.at(cm, (truth, guess), 1)
            result["confusion_category"] = cm.tolist()
    joint = np.ones(len(arrays["images"]), dtype=bool)
    for name in HEADS:
        joint &= pred[f"probs_{name}"].argmax(-1).numpy() == np.asarray(arrays[name])
    result["accuracy_joint"] = float(joint.mean())
    return result
