"""Muse-style decoder fine-tuning: a wider, deeper decoder trained behind a frozen tokenizer.

Muse (Chang et al., 2023), Sec. 2.5 "Decoder Finetuning": "we increase the capacity of the VQGAN
decoder by the addition of more residual layers and channels while keeping the encoder capacity
fixed. We then finetune the new decoder layers while keeping the VQGAN encoder weights, codebook
and transformers ... frozen" -- the token "language" stays fixed, so every stage-2 model trained on
the old tokens keeps working with the new decoder. Appendix A.2 gives the sizes: base VQGAN 2
residual blocks per resolution and 128 base channels; fine-tuned decoder 4 blocks and 256 channels,
i.e. twice the depth and twice the width, which are the defaults here.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Optional

from torch import nn

from lib.io import AtelierInputError
from lib.models.decoder import Decoder
from lib.models.movq_decoder import MoVQDecoder
from lib.models.style_decoder import StyleDecoder

_CONFIG_KEYS = {
    Decoder: ("out_ch", "ch", "ch_mult", "num_res_blocks", "z_dim", "downsample_factor"),
    MoVQDecoder: (
        "out_ch", "ch", "ch_mult", "num_res_blocks", "z_dim", "downsample_factor",
        ("initial_features", "initial_feature_kind"), "num_scn_blocks", "latent_size", "fourier_scale",
    ),
    StyleDecoder: (
        "out_ch", "ch", "ch_mult", "num_res_blocks", "z_dim", "downsample_factor", "style_dim",
        "start", ("resizer", "resizer_kind"), ("norm", "norm_kind"), "latent_size",
    ),
}


def decoder_config(decoder: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild ``decoder``'s architecture (read back from its attributes)."""
    keys = _CONFIG_KEYS.get(type(decoder))
    if keys is None:
        raise TypeError(f"no known config for {type(decoder).__name__}; pass the class and kwargs explicitly")
    cfg = {}
    for key in keys:
        arg, attr = key if isinstance(key, tuple) else (key, key)
        cfg[arg] = getattr(decoder, attr)
    return cfg


def build_muse_decoder(
    base: nn.Module,
    width_mult: int = 2,
    depth_mult: int = 2,
    **overrides: Any,
) -> nn.Module:
    """A fresh decoder of ``base``'s class with ``ch * width_mult`` channels and ``num_res_blocks * depth_mult`` blocks.

    Everything that fixes the interface to the frozen tokenizer -- ``z_dim``, the down/upsampling
    factor, output channels, and variant options such as MoVQ's initial features -- is copied, so
    the new decoder accepts exactly the old quantized maps. ``overrides`` replace any argument
    (e.g. ``num_scn_blocks=None``). Weights are newly initialised (Muse trains the new decoder
    from the frozen encoder/codebook); copy matching weights yourself if warm-starting.
    """
    cfg = decoder_config(base)
    cfg["ch"] = int(cfg["ch"] * width_mult)
    cfg["num_res_blocks"] = int(cfg["num_res_blocks"] * depth_mult)
    cfg.update(overrides)
    new = type(base)(**cfg)
    if (new.z_dim, new.downsample_factor) != (base.z_dim, base.downsample_factor):
        raise AtelierInputError(
            f"a fine-tuned decoder must keep the frozen tokenizer's z_dim/factor "
            f"{(base.z_dim, base.downsample_factor)}, got {(new.z_dim, new.downsample_factor)}"
        )
    return new


def _train_frozen(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def freeze_for_decoder_finetune(
    encoder: nn.Module,
    quantizer: nn.Module,
    *others: nn.Module,
    decoder: Optional[nn.Module] = None,
) -> list[nn.Parameter]:
    """Freeze ``encoder``, ``quantizer`` (and ``others``, e.g. a stage-2 transformer) for Muse Sec. 2.5.

    Sets ``requires_grad=False`` on all their parameters and pins them in eval mode: a quantizer
    with EMA codebook updates or dead-code restarts changes the codebook in train mode even with no
    gradients, which would silently change the token language the frozen stage-2 models speak.
    The pin survives a parent module's ``.train()`` (undo with :func:`unfreeze`).

    If ``decoder`` is given its parameters are made trainable and returned, ready for the
    optimiser; otherwise an empty list is returned.
    """
    for module in (encoder, quantizer, *others):
        for p in module.parameters():
            p.requires_grad_(False)
        for sub in module.modules():
            sub.train = functools.partial(_train_frozen, sub)
            nn.Module.train(sub, False)
    if decoder is None:
        return []
    params = list(decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def unfreeze(*modules: nn.Module) -> None:
    """Undo :func:`freeze_for_decoder_finetune` on ``modules`` (trainable, ``.train()`` works again)."""
    for module in modules:
        for sub in module.modules():
            sub.__dict__.pop("train", None)
        for p in module.parameters():
            p.requires_grad_(True)


def trainable_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` across ``modules`` (what an optimiser should see)."""
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def assert_frozen(module: nn.Module) -> None:
    """Raise if any parameter of ``module`` would be trained or the module is in train mode."""
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    if trainable:
        raise AssertionError(f"{type(module).__name__} has trainable parameters: {trainable[:5]}")
    training = [n for n, m in module.named_modules() if m.training]
    if training:
        raise AssertionError(f"{type(module).__name__} has submodules in train mode: {training[:5]}")


__all__ = [
    "build_muse_decoder",
    "decoder_config",
    "freeze_for_decoder_finetune",
    "unfreeze",
    "trainable_parameters",
    "assert_frozen",
]
