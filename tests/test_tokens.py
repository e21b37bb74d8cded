"""Token caches (lib/stages/tokens.py): built once per tokenizer, read by the generators, never re-tokenized."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import lib.config as lib_params
import lib.images as lib_images
import lib.pipelines.generators as generator_pipe
import lib.pipelines.tokenizers as tokenizer_pipe
import lib.store.generators as generator_store
import lib.store.tokenizers as tokenizer_store
from lib import store
from lib.io import AtelierInputError
from lib.models.tokenizer import Tokenizer, train_tokenizer
from lib.stages import generator as GEN, tokens as TOK
from lib.store import data_dir, repo_root


def test_tokens_stage_covers_exactly_the_generators_tokenizers():
    stages = yaml.safe_load((repo_root() / "dvc.yaml").read_text())["stages"]
    listed = stages["tokens"]["foreach"]
    raw = yaml.safe_load((repo_root() / "params.yaml").read_text())
    used = {m["tokenizer"] for m in raw["generation"]["models"].values()}
    assert sorted(listed) == sorted(used) and len(listed) == len(set(listed))
    # every generator stage depends on its tokenizer's cache
    assert "artifacts/tokens/${item.tokenizer}" in stages["generator"]["do"]["deps"]


@pytest.fixture()
def tiny_world(tmp_path, monkeypatch):
    """A small caption dataset, one 2-step tokenizer of the smoke profile, tiny generator settings."""
    from lib.data.build import build_caption_dataset

    fmnist = data_dir() / "fashion-mnist"
    if not fmnist.is_dir():
        pytest.skip(f"{fmnist}: Fashion-MNIST not present (reproduce/run fetches it)")
    build_caption_dataset(fmnist, store.caption_root(), max_per_split={"train": 120, "val": 20, "test": 40})
    P = lib_params.load("smoke")
    P["generation"].update(dim=32, depth=1, heads=2, batch_size=8, warmup_steps=1, eval_n=16)
    P["generation"]["steps"] = {**P["generation"]["steps"], "muse": 3, "ar": 2}
    monkeypatch.setattr(lib_params, "load", lambda profile=None, path=None: P)
    name = P["generation"]["models"]["muse"]["tokenizer"]
    from lib.data.caption_dataset import load_split

    tok = Tokenizer(tokenizer_pipe.tokenizer_config(P["tokenizers"], name))
    x = lib_images.to_float(load_split(store.caption_root(), "train")["images"])
    train_tokenizer(tok, x, tokenizer_store.checkpoint_path(name), steps=2, batch_size=8, perceptual_weight=0.0,
                    disc_ndf=P["tokenizers"]["disc_ndf"], progress=False)

    from lib.generation import TextFeatureTable
    from lib.text.cache import caption_index

    class HashEncoder:  # a text encoder without MiniLM: deterministic random vectors per caption
        max_length = 6

        def encode(self, texts, batch_size=256, progress=False):
            g = torch.Generator().manual_seed(len(texts))
            return {"tokens": torch.randn(len(texts), 6, 384, generator=g), "mask": torch.ones(len(texts), 6, dtype=torch.bool)}

    def fake_text_table(progress=False):
        texts, ids = caption_index(generator_pipe.load_captions())
        table = TextFeatureTable.build(texts, generator_store.text_table_path(), encoder=HashEncoder(), progress=False)
        return table, {s: torch.from_numpy(v) for s, v in ids.items()}

    monkeypatch.setattr(GEN, "text_table", fake_text_table)
    return P, name, tok


def test_cache_holds_every_split_as_the_tokenizer_tokenizes_it(tiny_world):
    P, name, tok = tiny_world
    path = TOK.build(P, name, progress=False)
    cache = TOK.load(name, tokenizer_checkpoint=tokenizer_store.checkpoint_path(name))
    from lib.data.caption_dataset import load_split

    for split, n in (("train", 120), ("val", 20), ("test", 40)):
        images = load_split(store.caption_root(), split)["images"]
        assert len(cache[split]) == len(images)
        grid = tok.eval().tokenize(lib_images.to_float(images[:7]))
        assert torch.equal(cache[split][:7], grid.reshape(7, -1, grid.shape[-1]))
    assert cache.token_shape == tuple(tok.token_shape) and cache.vocab_size == tok.vocab_size
    assert cache["train"].dtype == torch.long and path == TOK.cache_path(name)


def test_generator_trains_from_the_cache_without_running_the_tokenizer(tiny_world, monkeypatch):
    P, name, _ = tiny_world
    TOK.build(P, name, progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("a generator stage ran tokenizer code")

    for method in ("tokenize", "encode", "forward", "reconstruct"):
        monkeypatch.setattr(Tokenizer, method, forbidden)
    monkeypatch.setattr(TOK, "tokenize_images", forbidden)
    monkeypatch.setattr(tokenizer_pipe, "tokenize_images", forbidden)
    assert GEN.run_train("smoke", "muse", progress=False) == 0
    doc = json.loads(generator_store.metrics_path("muse").read_text())
    assert doc["metrics"]["num_train_images"] == 120 and doc["metrics"]["steps"] == 3
    assert doc["provenance"]["token_cache"] == f"artifacts/tokens/{name}/tokens.safetensors"
    assert generator_store.checkpoint_path("muse").is_file()


def test_a_cache_of_another_tokenizer_checkpoint_is_refused(tiny_world):
    P, name, tok = tiny_world
    TOK.build(P, name, progress=False)
    # the tokenizer is retrained after its cache was built: the stale cache must not be used
    ckpt = tokenizer_store.checkpoint_path(name)
    ckpt.unlink()
    from lib.data.caption_dataset import load_split

    x = lib_images.to_float(load_split(store.caption_root(), "train")["images"])
    train_tokenizer(Tokenizer(tokenizer_pipe.tokenizer_config(P["tokenizers"], name)), x, ckpt, steps=1, batch_size=8, seed=5,
                    perceptual_weight=0.0, disc_ndf=P["tokenizers"]["disc_ndf"], progress=False)
    with pytest.raises(AtelierInputError, match=r"built from another checkpoint.*dvc repro tokens@"):
        TOK.load(name, tokenizer_checkpoint=ckpt)
    with pytest.raises(AtelierInputError, match=r"built from another checkpoint"):
        GEN.run_train("smoke", "muse", progress=False)


def test_missing_cache_and_skipped_marker_are_named(tiny_world, capsys):
    P, name, _ = tiny_world
    with pytest.raises(AtelierInputError, match=rf"no token cache for tokenizer '{name}'.*tokens@{name}"):
        TOK.load(name)
    skipped = next(n for n, s in P["tokenizers"]["steps"].items() if s == 0 and n in P["tokenizers"]["configs"])
    assert TOK.main(["build", "--profile", "smoke", "--name", skipped]) == 0
    assert json.loads((TOK.cache_path(skipped).parent / TOK.SKIPPED_MARKER).read_text())["skipped"] is True
    with pytest.raises(AtelierInputError, match="stage was skipped"):
        TOK.load(skipped)
    assert TOK.main(["skip", "--profile", "smoke", "--name", name]) == 2
    assert "is trained in profile" in capsys.readouterr().err
