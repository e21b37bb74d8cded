"""The assembled tokenizer (encoder -> quantizer -> decoder) and its training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.data import fashion_mnist
from lib.data.render import colourise
from lib.io import AtelierInputError
from lib.models.tokenizer import Tokenizer, load_tokenizer, resolve_config, train_tokenizer
from lib.store import repo_root

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


def test_channels_last_training_is_the_same_computation_and_resumes(tmp_path):
    """channels_last is a layout choice only (params.yaml tokenizers.channels_last): the losses of
    a short run with GAN and perceptual terms match the default layout's, and its checkpoint (written contiguous) reloads into a default-layout tokenizer."""
    torch.set_num_threads(1)
    cfg = {**SMALL, **CONFIGS["movq"]}
    runs = {}
    for layout in (False, True):
        torch.manual_seed(0)
        tok = Tokenizer(cfg)
        runs[layout] = train_tokenizer(tok, _images(8), tmp_path / f"{layout}.safetensors", steps=4, batch_size=8,
                                       gan_start=2, perceptual_weight=0.1, progress=False, channels_last=layout)
    for step, (a, b) in enumerate(zip(runs[False], runs[True])):
        # before the GAN starts the runs agree to round-off; its adaptive weight (a ratio of gradient
        # norms) then amplifies round-off, so later steps agree to 1%, not 1e-4
        tol = 1e-4 if step < 2 else 1e-2
        for key in ("loss_rec", "loss_quant", "psnr"):
            assert abs(a[key] - b[key]) <= tol * max(1.0, abs(a[key])), (step, key, a[key], b[key])
    assert "loss_d" in runs[True][-1]
    again = load_tokenizer(tmp_path / "True.safetensors", cfg)
    assert torch.equal(again.tokenize(_images(4)), tok.tokenize(_images(4)))


@pytest.mark.parametrize("kind", ["pq-style", "movq"])
def test_checkpoint_describes_itself(tmp_path, kind):
    """Issue 16: load_tokenizer(path) rebuilds the tokenizer from the checkpoint alone (name, config and
    discriminator width recorded in it) and gives the same tokens; a non-tokenizer file is refused."""
    x = _images(4)
    cfg = {**SMALL, **CONFIGS[kind], "name": f"my_{kind}"}
    tok = Tokenizer(cfg)
    train_tokenizer(tok, x, tmp_path / "tok.safetensors", steps=1, batch_size=4, perceptual_weight=0.0,
                    gan_start=10_000, disc_ndf=8, progress=False)
    again = load_tokenizer(tmp_path / "tok.safetensors")
    assert again.config == tok.config and again.config["name"] == f"my_{kind}"
    assert torch.equal(again.tokenize(x), tok.eval().tokenize(x))
    assert torch.equal(load_tokenizer(tmp_path / "tok.safetensors", cfg, disc_ndf=8).tokenize(x), again.tokenize(x))
    from lib.io import save_checkpoint
    save_checkpoint(tmp_path / "other.safetensors", {"model.w": torch.zeros(1)}, {"arch": {"name": "generator"}})
    with pytest.raises(AtelierInputError, match="other.safetensors: not a tokenizer checkpoint"):
        load_tokenizer(tmp_path / "other.safetensors")
