"""Stage one: image tokenizer = encoder -> quantizer -> decoder, one class for every paper's variant.

- VQGAN-style (Taming; the VQ/RQ baselines): :class:`~lib.models.decoder.Decoder`.
- MoVQ (Sec. 3.1): :class:`~lib.models.movq_decoder.MoVQDecoder` with spatially conditional norm,
  usually with the multichannel quantizer (one shared codebook).
- M6-Fashion (Sec. 3.1): product quantizer + :class:`~lib.models.style_decoder.StyleDecoder`
  driven by the spatial style code.

The configuration is a plain dict (from ``params.yaml``) so checkpoints record it as their ``arch``
and a checkpoint of another configuration is refused by name. Images are float ``[B,3,H,W]`` in
[-1, 1]; token indices are ``[B, h, w, C]`` (C channels per position, see :mod:`lib.quantizers`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lib.io import AtelierInputError, checkpoint_meta
from lib.models.decoder import Decoder
from lib.models.encoder import Encoder
from lib.models.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_weight,
    disc_factor,
    hinge_d_loss,
    hinge_g_loss,
    psnr,
)
from lib.models.movq_decoder import MoVQDecoder
from lib.models.muse_decoder import freeze_for_decoder_finetune
from lib.models.style_decoder import StyleDecoder
from lib.quantizers import build_quantizer
from lib.training import ResumableTrainer, batch_indices, load_model_weights

DECODERS = {"vqgan": Decoder, "movq": MoVQDecoder, "style": StyleDecoder}

DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 32,
    "ch": 32,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "z_dim": 64,
    "quantizer": "vq",
    "quantizer_kwargs": {"codebook_size": 1024},
    "decoder": "vqgan",
    "decoder_kwargs": {},
}


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in; unknown keys and unknown decoder kinds are errors naming them."""
    unknown = set(config) - set(DEFAULT_CONFIG) - {"name"}
    if unknown:
        raise AtelierInputError(f"tokenizer config: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg.update(copy.deepcopy(dict(config)))
    if cfg["decoder"] not in DECODERS:
        raise AtelierInputError(f"tokenizer config: decoder must be one of {sorted(DECODERS)}, got {cfg['decoder']!r}")
    return cfg


class Tokenizer(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.config = resolve_config(config)
        c = self.config
        shared = dict(ch=c["ch"], ch_mult=tuple(c["ch_mult"]), num_res_blocks=c["num_res_blocks"], z_dim=c["z_dim"])
        self.encoder = Encoder(in_ch=3, **shared)
        self.quantizer = build_quantizer(c["quantizer"], dim=c["z_dim"], **c["quantizer_kwargs"])
        dec_kwargs = dict(c["decoder_kwargs"])
        if c["decoder"] in ("movq", "style"):
            dec_kwargs.setdefault("latent_size", c["image_size"] // self.encoder.downsample_factor)
        # decoder_kwargs may widen/deepen the decoder alone (Muse Sec. 2.5, see muse_finetune_config);
        # ch_mult and z_dim must mirror the encoder, so they are not overridable.
        fixed = sorted(set(dec_kwargs) & {"ch_mult", "z_dim", "downsample_factor", "out_ch"})
        if fixed:
            raise AtelierInputError(f"tokenizer config: decoder_kwargs may not set {fixed} (they must match the encoder)")
        shared_dec = {**shared, **{k: dec_kwargs.pop(k) for k in ("ch", "num_res_blocks") if k in dec_kwargs}}
        self.decoder = DECODERS[c["decoder"]](out_ch=3, **shared_dec, **dec_kwargs)

    @property
    def arch(self) -> dict:
        # the config's own name rides along, so a checkpoint describes itself (load_tokenizer(path))
        named = {"config_name": self.config["name"]} if self.config.get("name") else {}
        return {"name": "tokenizer", **named, **{k: v for k, v in self.config.items() if k != "name"}}

    @property
    def token_shape(self) -> tuple[int, int, int]:
        """``(h, w, C)`` of the index grid for this config's image size."""
        side = self.config["image_size"] // self.encoder.downsample_factor
        return side, side, self.quantizer.num_channels

    @property
    def vocab_size(self) -> int:
        return self.quantizer.codebook_size

    def last_layer(self) -> torch.Tensor:
        last = getattr(self.decoder, "last_layer", None)
        return last() if callable(last) else last

    def encode(self, images: torch.Tensor):
        """``QuantizerOutput`` of the images (``indices`` ``[B,h,w,C]``)."""
        return self.quantizer(self.encoder(images))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.decode_indices(indices))

    def forward(self, images: torch.Tensor):
        q = self.encode(images)
        return self.decoder(q.quantized), q

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Indices ``[N,h,w,C]`` of many images, in eval mode, on CPU."""
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([self.encode(images[i:i + batch_size].to(device)).indices.cpu()
                          for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([self(images[i:i + batch_size].to(device))[0].clamp(-1, 1).cpu()
                          for i in range(0, len(images), batch_size)])


class _TokenizerWithCritic(nn.Module):
    """Tokenizer and discriminator in one module so one optimizer and one checkpoint hold both."""

    def __init__(self, tokenizer: Tokenizer, ndf: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.disc = PatchDiscriminator(in_ch=3, ndf=ndf, n_layers=2)


def train_tokenizer(tokenizer: Tokenizer, images: torch.Tensor, ckpt_path: str | Path, *, steps: int,
                    batch_size: int = 64, lr: float = 4e-4, seed: int = 0, perceptual_weight: float = 0.1,
                    gan_weight: float = 0.1, gan_start: int | None = None, disc_ndf: int = 32,
                    device: str = "cpu", progress: bool = True, perceptual: PerceptualLoss | None = None,
                    channels_last: bool = False):
    """Train (or resume) with the VQGAN objective: L1 + perceptual (EfficientNet-Lite0 stand-in for
    LPIPS) + quantizer loss + hinge GAN from ``gan_start`` with the adaptive weight (VQGAN Eq. 7).

    ``images``: float ``[N,3,H,W]`` in [-1, 1] (held in memory; the batch of each step is drawn
    from the step number, so resume is exact). ``channels_last``: NHWC memory layout for every conv
    net of the step (a speed choice only: the same computation up to float round-off). Returns the
    loss history.
    """
    gan_start = steps // 2 if gan_start is None else gan_start
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    both = _TokenizerWithCritic(tokenizer, disc_ndf).to(device, memory_format=fmt)
    perceptual = (perceptual or PerceptualLoss()).to(device, memory_format=fmt) if perceptual_weight > 0 else None
    # One Adam over both: each backward below fills only one side's grads (the other is None), and
    # Adam skips parameters without grads, so this equals two optimizers with separate steps.
    opt = torch.optim.Adam(both.parameters(), lr=lr, betas=(0.5, 0.9))
    g_params = list(both.tokenizer.parameters())
    d_params = list(both.disc.parameters())

    def step_fn(step: int) -> dict:
        idx = batch_indices(len(images), batch_size, step, seed)
        x = images[idx].to(device).contiguous(memory_format=fmt)
        recon, q = both.tokenizer(x)
        rec = F.l1_loss(recon, x)
        nll = rec + (perceptual_weight * perceptual(recon, x) if perceptual is not None else 0.0)
        loss = nll + q.loss
        logs = {"loss_rec": rec.item(), "loss_quant": q.loss.item(), "perplexity": q.stats.get("perplexity", 0.0),
                "usage": q.stats.get("usage", 0.0)}
        use_gan = disc_factor(step, gan_start, gan_weight) > 0
        if use_gan:
            for p in d_params:
                p.requires_grad_(False)
            g_loss = hinge_g_loss(both.disc(recon))
            weight = adaptive_weight(nll, g_loss, tokenizer.last_layer())
            loss = loss + gan_weight * weight * g_loss
            logs["loss_g"] = g_loss.item()
            for p in d_params:
                p.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in d_params:
            p.grad = None
        opt.step()
        if use_gan:
            opt.zero_grad(set_to_none=True)
            d_loss = hinge_d_loss(both.disc(x), both.disc(recon.detach()))
            d_loss.backward()
            for p in g_params:
                p.grad = None
            opt.step()
            logs["loss_d"] = d_loss.item()
        logs["psnr"] = float(psnr(recon.detach(), x).mean())
        return logs

    trainer = ResumableTrainer(both, opt, ckpt_path, {**tokenizer.arch, "disc_ndf": disc_ndf}, seed, steps,
                               ckpt_every=max(50, steps // 10), desc=f"tokenizer {tokenizer.config.get('name', '')}")
    history = trainer.run(step_fn, progress=progress)
    tokenizer.eval()
    return history


def muse_finetune_config(base_config: Mapping[str, Any], width_mult: int = 2, depth_mult: int = 2) -> dict[str, Any]:
    """The config of ``base_config`` with a ``width_mult`` x wider, ``depth_mult`` x deeper decoder.

    Muse Sec. 2.5 / App. A.2 (base 128 channels and 2 residual blocks -> 256 and 4): encoder,
    quantizer and every decoder option are kept, so the new decoder reads the same quantized maps
    (the same token "language"). Equals ``build_muse_decoder(base.decoder, width_mult, depth_mult)``.
    """
    cfg = resolve_config(base_config)
    dec = dict(cfg["decoder_kwargs"])
    dec["ch"] = int(dec.get("ch", cfg["ch"]) * width_mult)
    dec["num_res_blocks"] = int(dec.get("num_res_blocks", cfg["num_res_blocks"]) * depth_mult)
    cfg["decoder_kwargs"] = dec
    return cfg


def finetune_decoder(base: Tokenizer, images: torch.Tensor, ckpt_path: str | Path, *, width_mult: int = 2,
                     depth_mult: int = 2, name: str | None = None, **train_kwargs):
    """Muse decoder fine-tuning: a new, larger decoder trained behind ``base``'s frozen encoder and
    quantizer (codebook) with the same objective as :func:`train_tokenizer` (resumable).

    Returns ``(tokenizer, history)``; the tokenizer's config is :func:`muse_finetune_config` of the
    base's (plus ``name``), so :func:`load_tokenizer` reloads it. Encoder and quantizer are copied
    from ``base`` and pinned in eval mode (no EMA/k-means/restart updates): the tokens of any image
    are exactly the base tokenizer's, which the caller can check with ``tokenize``.
    """
    cfg = muse_finetune_config(base.config, width_mult, depth_mult)
    if name is not None:
        cfg["name"] = name
    tok = Tokenizer(cfg)
    tok.encoder.load_state_dict(base.encoder.state_dict())
    tok.quantizer.load_state_dict(base.quantizer.state_dict())
    freeze_for_decoder_finetune(tok.encoder, tok.quantizer, decoder=tok.decoder)
    history = train_tokenizer(tok, images, ckpt_path, **train_kwargs)
    return tok, history


def load_tokenizer(ckpt_path: str | Path, config: Mapping[str, Any] | None = None, disc_ndf: int | None = None,
                   device: str = "cpu") -> Tokenizer:
    """The tokenizer (without its discriminator) from a :func:`train_tokenizer` checkpoint.

    Checkpoints describe themselves (issue 16): with ``config`` / ``disc_ndf`` left out, the
    architecture recorded in the checkpoint builds the tokenizer, so ``load_tokenizer(path)`` needs
    nothing else. Given, they must equal the recorded ones (a checkpoint of another config is refused,
    naming the file).
    """
    if config is None or disc_ndf is None:
        arch = checkpoint_meta(ckpt_path).get("arch") or {}
        if not isinstance(arch, dict) or arch.get("name") != "tokenizer":
            raise AtelierInputError(f"{ckpt_path}: not a tokenizer checkpoint (arch name "
                                    f"{arch.get('name') if isinstance(arch, dict) else arch!r})")
        if config is None:
            config = {k: v for k, v in arch.items() if k not in ("name", "config_name", "disc_ndf")}
            if arch.get("config_name"):
                config["name"] = arch["config_name"]
        if disc_ndf is None:
            disc_ndf = int(arch.get("disc_ndf", 32))
    tok = Tokenizer(config)
    both = _TokenizerWithCritic(tok, disc_ndf)
    load_model_weights(both, ckpt_path, {**tok.arch, "disc_ndf": disc_ndf})
    return tok.to(device).eval()
