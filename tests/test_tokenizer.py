"""The assembled tokenizer (encoder -> quantizer -> decoder) and its training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.data import fashion_mnist
from lib.data.render import colourise
from lib.io import AtelierInputError
from lib.models.tokenizer import Tokenizer, load_tokenizer, resolve_config, train_tokenizer
from lib.paths import repo_root

CONFIGS = {
    "vq": dict(quantizer="vq", quantizer_kwargs={"codebook_size": 64}),
    "rq": dict(quantizer="rq", quantizer_kwargs={"codebook_size": 32, "depth": 2}),
    "pq-style": dict(quantizer="pq", quantizer_kwargs={"codebook_size": 32, "num_groups": 4}, decoder="style"),
    "movq": dict(quantizer="movq", quantizer_kwargs={"codebook_size": 64, "num_chunks": 4}, decoder="movq"),
}
SMALL = dict(ch=16, z_dim=32)


def _images(n=16):
    x, _ = fashion_mnist.load(repo_root() / "data" / "fashion-mnist", "test")
    rng = np.random.default_rng(0)
    img = colourise(x[:n], rng.integers(10, size=n), rng.integers(4, size=n))
    return torch.from_numpy(img).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.mark.parametrize("name", CONFIGS)
def test_indices_decode_to_the_reconstruction(name):
    tok = Tokenizer({**SMALL, **CONFIGS[name]}).eval()
    x = _images(4)
    idx = tok.tokenize(x)
    assert idx.shape == (4, *tok.token_shape) and idx.dtype == torch.long
    assert int(idx.max()) < tok.vocab_size
    with torch.no_grad():
        assert torch.allclose(tok.decode_indices(idx), tok(x)[0], atol=1e-5)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['codebok'\]"):
        resolve_config({"codebok": 3})
    with pytest.raises(ValueError, match="decoder must be one of"):
        resolve_config({"decoder": "diffusion"})


def test_tiny_tokenizer_overfits_16_images_and_resumes(tmp_path):
    torch.set_num_threads(2)
    x = _images(16)
    cfg = {**SMALL, **CONFIGS["vq"], "quantizer_kwargs": {"codebook_size": 64, "kmeans_init": True}}
    tok = Tokenizer(cfg)
    hist = train_tokenizer(tok, x, tmp_path / "tok.safetensors", steps=150, batch_size=16, lr=2e-3,
                           perceptual_weight=0.0, gan_start=10_000, progress=False)
    assert hist[-1]["psnr"] > hist[0]["psnr"] + 5
    assert hist[-1]["psnr"] > 18.0
    again = load_tokenizer(tmp_path / "tok.safetensors", cfg)
    assert torch.equal(again.tokenize(x), tok.tokenize(x))
    with pytest.raises(AtelierInputError, match="checkpoint is for architecture"):
        load_tokenizer(tmp_path / "tok.safetensors", {**cfg, "z_dim": 16})


def test_gan_phase_trains_discriminator(tmp_path):
    tok = Tokenizer({**SMALL, **CONFIGS["movq"]})
    hist = train_tokenizer(tok, _images(8), tmp_path / "g.safetensors", steps=4, batch_size=8, gan_start=2,
                           perceptual_weight=0.1, progress=False)
    assert "loss_d" not in hist[1] and "loss_d" in hist[3] and np.isfinite(hist[3]["loss_g"])
