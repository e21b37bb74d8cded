"""Stage-1 tokenizer networks and their losses.

Conventions shared by every module here:

- Images are float tensors ``[B, 3, H, W]`` in ``[-1, 1]``; decoders return unbounded values
  (clamp for display/metrics), as VQGAN does.
- Networks take and return plain tensors: ``Encoder(x) -> z [B, z_dim, H/f, W/f]``; any quantizer
  of :mod:`lib.quantizers` maps ``z`` to ``z_q`` of the same shape; every decoder maps ``z_q`` back
  to an image. Decoders expose ``last_layer`` for VQGAN's adaptive GAN weight.
- No module hard-codes a device; buffers and parameters follow ``.to(device)``.

Modules:

- :mod:`.blocks`        -- ResBlock (GroupNorm/SiLU/conv), Down/Upsample, position encodings
- :mod:`.encoder`       -- VQGAN-style :class:`Encoder`
- :mod:`.decoder`       -- plain VQGAN-style :class:`Decoder`
- :mod:`.movq_decoder`  -- MoVQ :class:`SpatialConditionalNorm` and :class:`MoVQDecoder`
- :mod:`.style_decoder` -- M6-Fashion / StyleMapGAN :class:`StyleDecoder`
- :mod:`.muse_decoder`  -- Muse Sec. 2.5 wider/deeper decoder and freezing for decoder fine-tuning
- :mod:`.backbones`     -- frozen ImageNet EfficientNet-Lite0 feature maps (offline weights)
- :mod:`.losses`        -- reconstruction, perceptual (LPIPS stand-in), PatchGAN hinge, adaptive weight

Importing this package does not import ``timm``; the backbone loads it on first use.
"""

from lib.models.blocks import Downsample, ResBlock, Upsample, group_norm, sinusoidal_position_encoding
from lib.models.decoder import Decoder
from lib.models.encoder import Encoder
from lib.models.movq_decoder import INITIAL_FEATURES, MoVQDecoder, SpatialConditionalNorm
from lib.models.style_decoder import PixelNorm, SpatialModulation, StyleDecoder
from lib.models.muse_decoder import build_muse_decoder, decoder_config, freeze_for_decoder_finetune, unfreeze
from lib.models.backbones import EfficientNetLite0Features, efficientnet_lite0_features, load_efficientnet_lite0
from lib.models.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_weight,
    disc_factor,
    hinge_d_loss,
    hinge_g_loss,
    psnr,
    reconstruction_loss,
)

__all__ = [
    "Downsample", "ResBlock", "Upsample", "group_norm", "sinusoidal_position_encoding",
    "Encoder", "Decoder", "MoVQDecoder", "SpatialConditionalNorm", "INITIAL_FEATURES",
    "StyleDecoder", "SpatialModulation", "PixelNorm",
    "build_muse_decoder", "decoder_config", "freeze_for_decoder_finetune", "unfreeze",
    "EfficientNetLite0Features", "efficientnet_lite0_features", "load_efficientnet_lite0",
    "PerceptualLoss", "PatchDiscriminator", "hinge_d_loss", "hinge_g_loss", "adaptive_weight",
    "disc_factor", "reconstruction_loss", "psnr",
]
