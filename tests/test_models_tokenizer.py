"""Tokenizer networks and losses (lib.models): shapes, the conditioning paths each paper relies on,
the real EfficientNet-Lite0 weights, GAN-loss signs, and an overfitting check on real Fashion-MNIST.

Kept under ~60 s on 2 CPU cores: shape checks use narrow networks (shape logic does not depend on
width), the backbone is loaded once per module.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lib.models import (
    INITIAL_FEATURES,
    Decoder,
    Encoder,
    MoVQDecoder,
    PatchDiscriminator,
    PerceptualLoss,
    SpatialConditionalNorm,
    SpatialModulation,
    StyleDecoder,
    adaptive_weight,
    build_muse_decoder,
    disc_factor,
    freeze_for_decoder_finetune,
    hinge_d_loss,
    hinge_g_loss,
    psnr,
    reconstruction_loss,
    unfreeze,
)
from lib.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneWeightsError,
    efficientnet_lite0_features,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SMALL = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_dim=8)
# Overfitting check: residual blocks only in the middle/decoder levels keeps 200 steps at ~10 s.
TINY = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=0, z_dim=8)
# (image side, token side, extra kwargs): the default 32 -> 8 grid and the 64 -> 16 grid.
CONFIGS = [(32, 8, {}), (64, 16, {"latent_size": 16})]


def fashion_mnist(n: int) -> torch.Tensor:
    """First ``n`` real training images as [n, 3, 32, 32] in [-1, 1] (idx: 16-byte header, uint8 28x28)."""
    if not FMNIST.is_file():
        pytest.skip(f"{FMNIST} missing: apt-get install dataset-fashion-mnist")
    with gzip.open(FMNIST, "rb") as fh:
        header = fh.read(16)
        assert int.from_bytes(header[:4], "big") == 2051, "not an idx3 image file"
        pixels = np.frombuffer(fh.read(n * 28 * 28), dtype=np.uint8).reshape(n, 1, 28, 28)
    x = torch.from_numpy(pixels.astype(np.float32)) / 127.5 - 1.0
    x = nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)  # 28 -> 32 with the background colour
    return x.expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run this module's tests on one intra-op thread.

    These are many small ops. On a quiet 2-core machine two threads are at most ~1.5x faster, but
    when other processes share the cores every two-thread OpenMP region waits for a descheduled
    partner: measured 8 s -> 300+ s for the overfitting test, and seconds per Adam step of a
    1M-parameter model. One thread degrades in proportion to the load instead.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def features():
    return efficientnet_lite0_features(pretrained=True)


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("side,tokens,extra", CONFIGS)
def test_encoder_and_every_decoder_variant_shapes(side, tokens, extra):
    x = torch.rand(1, 3, side, side) * 2 - 1
    enc = Encoder(**SMALL)
    z = enc(x)
    assert z.shape == (1, SMALL["z_dim"], tokens, tokens)
    assert enc.downsample_factor == 4
    decoders = [Decoder(**SMALL)]
    decoders += [MoVQDecoder(**SMALL, initial_features=k, **extra) for k in INITIAL_FEATURES]
    decoders += [StyleDecoder(**SMALL, start=s, **extra) for s in ("constant", "coarse")]
    decoders += [StyleDecoder(**SMALL, resizer="nearest", norm="instance", **extra)]
    for dec in decoders:
        with torch.no_grad():
            out = dec(z)
        assert out.shape == (1, 3, side, side), type(dec).__name__
        assert torch.isfinite(out).all()
        assert dec.last_layer.shape[0] == 3


def test_default_config_and_downsample_factor_parameter():
    enc = Encoder()  # documented default: ch=64, ch_mult=(1,2,2), z_dim=64, 32x32 -> 8x8
    z = enc(torch.zeros(1, 3, 32, 32))
    assert z.shape == (1, 64, 8, 8)
    assert MoVQDecoder()(z).shape == (1, 3, 32, 32)
    assert StyleDecoder()(z).shape == (1, 3, 32, 32)
    # Four levels but only factor 4: the last level stays at 8x8, decoder mirrors it.
    enc4 = Encoder(**{**SMALL, "ch_mult": (1, 2, 2, 2)}, downsample_factor=4)
    dec4 = Decoder(**{**SMALL, "ch_mult": (1, 2, 2, 2)}, downsample_factor=4)
    z4 = enc4(torch.zeros(1, 3, 32, 32))
    assert z4.shape[-2:] == (8, 8) and dec4(z4).shape == (1, 3, 32, 32)
    assert Encoder(**SMALL, downsample_factor=2)(torch.zeros(1, 3, 32, 32)).shape[-1] == 16
    with pytest.raises(ValueError, match="power of two"):
        Encoder(**SMALL, downsample_factor=3)
    with pytest.raises(ValueError, match="ch_mult"):
        Encoder(**SMALL, downsample_factor=8)
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="initial_features"):
        MoVQDecoder(initial_features="nope")


# --- MoVQ spatially conditional normalisation ----------------------------------------------------


def test_scn_normalises_with_groupnorm_and_modulates_locally_by_zq():
    scn = SpatialConditionalNorm(32, 8)
    f = torch.randn(2, 32, 16, 16) * 4 + 3
    zq = torch.randn(2, 8, 4, 4)
    out = scn(f, zq)
    # Per-group affine changes of F are removed by the GroupNorm statistics (Eq. 4's mu, sigma).
    groups = scn.norm.num_groups
    g = (torch.rand(1, groups, 1, 1, 1) + 0.5).expand(1, groups, 32 // groups, 1, 1).reshape(1, 32, 1, 1)
    torch.testing.assert_close(scn(f * g + 7.0, zq), out, atol=1e-4, rtol=1e-4)
    # With gamma = 1, beta = 0 the output is the plain normalised map: zero mean, unit variance per group.
    with torch.no_grad():
        scn.conv_gamma.weight.zero_(), scn.conv_gamma.bias.fill_(1.0)
        scn.conv_beta.weight.zero_(), scn.conv_beta.bias.zero_()
    plain = scn(f, zq).view(2, scn.norm.num_groups, -1)
    assert plain.mean(-1).abs().max() < 1e-4
    assert (plain.var(-1, unbiased=False) - 1).abs().max() < 1e-3

    scn = SpatialConditionalNorm(32, 8)
    zq2 = zq.clone()
    zq2[:, :, 1, 2] += 1.0  # one token -> its nearest-upsampled 4x4 patch: rows 4..7, cols 8..11
    diff = (scn(f, zq2) - scn(f, zq)).abs().sum(dim=(0, 1))
    assert diff[4:8, 8:12].min() > 0
    mask = torch.ones_like(diff, dtype=torch.bool)
    mask[4:8, 8:12] = False
    assert diff[mask].max() == 0


@pytest.mark.parametrize("kind", INITIAL_FEATURES)
def test_movq_decoder_uses_zq_and_position_only_inputs_see_it_only_through_scn(kind):
    torch.manual_seed(0)
    dec = MoVQDecoder(**SMALL, initial_features=kind).eval()
    assert len(dec.scn_layers) == 2 * 3  # two norms in each of the first three blocks (MoVQ Sec. 4.1)
    zq = torch.randn(2, SMALL["z_dim"], 8, 8)
    zq2 = zq + 0.5 * torch.randn_like(zq)
    with torch.no_grad():
        assert (dec(zq) - dec(zq2)).abs().mean() > 1e-3
        # Cut the SCN path: gamma, beta no longer read z_q.
        for scn in dec.scn_layers:
            scn.conv_gamma.weight.zero_()
            scn.conv_beta.weight.zero_()
        cut = (dec(zq) - dec(zq2)).abs().max()
    if kind in ("sinusoidal", "learned_constant", "fourier_position"):
        assert cut == 0, f"{kind}: z_q reached the output other than through SCN"
    else:  # "quantized" and MoVQ's "fourier" (features computed from z_q) also feed z_q in directly
        assert cut > 1e-3


def test_movq_num_scn_blocks_none_puts_scn_everywhere():
    dec = MoVQDecoder(**SMALL, num_scn_blocks=None)
    n_blocks = 2 + len(SMALL["ch_mult"]) * (SMALL["num_res_blocks"] + 1)
    assert len(dec.scn_layers) == 2 * n_blocks + 1  # + output norm


# --- M6-Fashion / StyleMapGAN style decoder ------------------------------------------------------


def test_style_decoder_modulates_every_resolution_and_edits_stay_local():
    torch.manual_seed(0)
    dec = StyleDecoder(ch=32, z_dim=16, style_dim=32).eval()
    for level in dec.levels:
        for block in level.blocks:
            assert isinstance(block.norm1, SpatialModulation) and isinstance(block.norm2, SpatialModulation)
    assert isinstance(dec.norm_out, SpatialModulation)

    zq = torch.randn(4, 16, 8, 8)
    edited = zq.clone()
    edited[:, :, :4, :4] = torch.randn(4, 16, 4, 4)  # top-left quarter of the token grid
    with torch.no_grad():
        diff = (dec(edited) - dec(zq)).abs().mean(dim=(0, 1))  # [32, 32]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[:16, :16] = True
    ratio = diff[inside].mean() / diff[~inside].mean()
    assert diff[inside].mean() > 1e-3
    assert ratio > 3.0, f"edit leaked: inside/outside change ratio {ratio:.2f}"
    # The change decays with distance: the opposite corner barely moves.
    assert diff[24:, 24:].mean() < diff[inside].mean() / 20


# --- EfficientNet-Lite0 backbone and perceptual loss ---------------------------------------------


def _china_photo() -> torch.Tensor:
    """scikit-learn's bundled photo of a Chinese temple, 224x224 centre crop, ImageNet-normalised."""
    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        pytest.skip("scikit-learn (which ships china.jpg) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "images" / "china.jpg"
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 224 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
    w, h = im.size
    im = im.crop(((w - 224) // 2, (h - 224) // 2, (w - 224) // 2 + 224, (h - 224) // 2 + 224))
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_efficientnet_lite0_loads_all_real_weights_and_recognises_a_building():
    model = load_efficientnet_lite0(pretrained=True).eval()
    assert model.loaded_tensors == 247
    assert Path(model.weights_path) == efficientnet_lite0_weights_path()
    with torch.no_grad():
        probs = model(_china_photo()).softmax(-1)[0]
    top = probs.topk(2)
    buildings = {442, 483, 497, 538, 668, 698, 832}  # bell cote, castle, church, dome, mosque, palace, stupa
    assert set(top.indices.tolist()) <= buildings, top
    assert top.values[0] > 0.2  # random weights give ~0.03


def test_backbone_rejects_a_checkpoint_that_does_not_fit(tmp_path):
    bad = tmp_path / "bad-lite0.pth"
    sd = {k: v for k, v in torch.load(efficientnet_lite0_weights_path(), weights_only=True).items()}
    first = next(iter(sd))
    sd[first] = torch.zeros(7, 7)
    torch.save(sd, bad)
    with pytest.raises(BackboneWeightsError, match="bad-lite0.pth"):
        load_efficientnet_lite0(weights_path=bad)


def test_feature_extractor_is_frozen_deterministic_feature_maps(features):
    x = fashion_mnist(4)
    maps = features(x)
    assert [m.shape[1] for m in maps] == features.channels == [24, 40, 112, 320]
    assert [m.shape[-1] for m in maps] == [32 // r for r in features.reductions]
    again = features(x)
    for a, b in zip(maps, again):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in features.parameters())
    features.train()
    assert not any(m.training for m in features.modules())
    # [-1, 1] images are mapped to the ImageNet normalisation the weights were trained with.
    rgb = torch.rand(2, 3, 8, 8)
    expected = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(features.normalize(rgb * 2 - 1), expected)


def test_perceptual_loss_zero_for_identical_and_grows_with_distortion(features):
    loss = PerceptualLoss(backbone=features, reduction="none")
    x = fashion_mnist(4)
    gen = torch.Generator().manual_seed(0)
    same = loss(x, x.clone())
    assert same.abs().max() < 1e-6
    small = loss((x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1), x)
    large = loss((x + 0.5 * torch.randn(x.shape, generator=gen)).clamp(-1, 1), x)
    shifted = loss(torch.roll(x, shifts=3, dims=-1), x)
    assert (small > 1e-4).all() and (shifted > 1e-3).all()
    assert (large > small).all()
    # Gradients reach the reconstruction, not the frozen backbone.
    x_hat = (x + 0.1 * torch.randn(x.shape, generator=gen)).requires_grad_(True)
    loss(x_hat, x).sum().backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in features.parameters())


# --- GAN losses ----------------------------------------------------------------------------------


def test_hinge_losses_signs_and_discriminator_shape():
    confident_real, confident_fake = torch.full((4, 1, 2, 2), 2.0), torch.full((4, 1, 2, 2), -2.0)
    assert hinge_d_loss(confident_real, confident_fake) == 0  # margins met: no loss
    assert hinge_d_loss(confident_fake, confident_real) == pytest.approx(3.0)  # fooled: 0.5 * (3 + 3)
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == pytest.approx(1.0)
    # The generator lowers its loss by raising D's score on fakes.
    assert hinge_g_loss(confident_real) < 0 < hinge_g_loss(confident_fake)
    logits = PatchDiscriminator()(torch.zeros(3, 3, 32, 32))
    assert logits.shape[:2] == (3, 1) and logits.shape[-1] > 1  # a map of patch logits


def test_adaptive_weight_finite_positive_and_gan_warmup():
    dec = Decoder(**SMALL)
    disc = PatchDiscriminator()
    x = fashion_mnist(4)
    x_hat = dec(torch.randn(4, SMALL["z_dim"], 8, 8))
    nll = reconstruction_loss(x_hat, x)
    g = hinge_g_loss(disc(x_hat))
    w = adaptive_weight(nll, g, dec.last_layer)
    assert torch.isfinite(w) and 0 < w <= 1e4 and not w.requires_grad
    (nll + w * g).backward()  # graphs were retained
    with torch.no_grad():
        x_hat = dec(torch.randn(4, SMALL["z_dim"], 8, 8))
        assert adaptive_weight(reconstruction_loss(x_hat, x), hinge_g_loss(disc(x_hat)), dec.last_layer) == 0
    assert disc_factor(0, 100) == 0.0 and disc_factor(99, 100) == 0.0
    assert disc_factor(100, 100) == 1.0 and disc_factor(5000, 100, factor=0.5) == 0.5
    assert reconstruction_loss(x, x, "l2") == 0 and reconstruction_loss(x, -x, "l1") > 0


# --- training -----------------------------------------------------------------------------------


def test_tiny_autoencoder_overfits_real_fashion_mnist():
    torch.manual_seed(0)
    x = fashion_mnist(16)
    enc, dec = Encoder(**TINY), Decoder(**TINY)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    start = time.perf_counter()
    with torch.no_grad():
        before = psnr(dec(enc(x)), x).mean().item()
    for _ in range(200):
        loss = reconstruction_loss(dec(enc(x)), x, "l1")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = psnr(dec(enc(x)), x).mean().item()
    assert after > 20.0, f"PSNR {before:.1f} -> {after:.1f} dB after 200 steps ({time.perf_counter() - start:.1f} s)"
    assert after > before + 8


# --- Muse decoder fine-tuning --------------------------------------------------------------------


class _StandInQuantizer(nn.Module):
    """Nearest-code lookup with a trainable codebook: enough to check freezing, independent of lib.quantizers."""

    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(n, d))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = torch.cdist(flat, self.codebook).argmin(1)
        q = self.codebook[idx].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return z + (q - z).detach()


@pytest.mark.parametrize("base_cls", [Decoder, MoVQDecoder, StyleDecoder])
def test_muse_decoder_is_wider_deeper_and_only_it_trains(base_cls):
    enc, quant = Encoder(**SMALL), _StandInQuantizer(32, SMALL["z_dim"])
    base = base_cls(**SMALL, initial_features="sinusoidal") if base_cls is MoVQDecoder else base_cls(**SMALL)
    big = build_muse_decoder(base)
    assert big.ch == 2 * base.ch and big.num_res_blocks == 2 * base.num_res_blocks
    assert sum(p.numel() for p in big.parameters()) > 3 * sum(p.numel() for p in base.parameters())
    if base_cls is MoVQDecoder:
        assert big.initial_feature_kind == "sinusoidal"

    params = freeze_for_decoder_finetune(enc, quant, decoder=big)
    assert {id(p) for p in params} == {id(p) for p in big.parameters()}
    assert not any(p.requires_grad for p in [*enc.parameters(), *quant.parameters()])
    assert not enc.training and not quant.training
    nn.ModuleList([enc, quant, big]).train()  # a parent's .train() must not unpin the frozen parts
    assert not enc.training and not quant.training and big.training

    enc_before = copy.deepcopy(enc.state_dict())
    code_before = quant.codebook.detach().clone()
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    loss = reconstruction_loss(big(quant(enc(x))), x)
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in enc.parameters()) and quant.codebook.grad is None
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in enc_before.items())
    assert torch.equal(quant.codebook, code_before)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in big.parameters())

    unfreeze(enc)
    enc.train()
    assert enc.training and all(p.requires_grad for p in enc.parameters())
