"""The named tokenizer configurations of params.yaml (lib/stages/tokenizer.py) and their validation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

import lib.config as params
import lib.config.tokenizers as tokenizer_cfg
import lib.pipelines.tokenizers as tokenizer_pipe
import lib.store.tokenizers as tokenizer_store
from lib.io import AtelierInputError, read_json
from lib.models.muse_decoder import build_muse_decoder, decoder_config
from lib.models.tokenizer import Tokenizer, finetune_decoder, train_tokenizer
from lib.quantizers import build_quantizer, equal_storage_configs
from lib.stages import tokenizer as T
from lib.store import repo_root

EQUAL_STORAGE = ("vq", "rq", "pq", "movq", "m6_pq_style")


@pytest.fixture(scope="module")
def section():
    return params.load("default")["tokenizers"]


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(repo_root() / "params.yaml", path)
    return path


def _edit(path, fn):
    raw = yaml.safe_load(path.read_text())
    fn(raw)
    path.write_text(yaml.safe_dump(raw))


def test_every_named_config_builds_and_round_trips_tokens(section):
    x = torch.rand(2, 3, section["image_size"], section["image_size"]) * 2 - 1
    for name in tokenizer_cfg.all_names(section):
        tok = Tokenizer(tokenizer_pipe.tokenizer_config(section, name)).eval()
        idx = tok.tokenize(x)
        assert idx.shape == (2, *tok.token_shape), name
        with torch.no_grad():
            assert torch.allclose(tok.decode_indices(idx), tok(x)[0], atol=1e-5), name


def test_equal_storage_set_really_has_equal_storage(section):
    storage = {n: Tokenizer(tokenizer_pipe.tokenizer_config(section, n)).quantizer.codebook_storage for n in EQUAL_STORAGE}
    assert len(set(storage.values())) == 1, storage
    # ... and is exactly lib.quantizers.equal_storage_configs for this z_dim and 4 channels
    reference = equal_storage_configs(1024, section["z_dim"], 4)
    for name in ("vq", "rq", "pq", "movq"):
        ours = section["configs"][name]
        assert ours["quantizer"] == name
        expected = {k: v for k, v in reference[name].items() if k != "dim"}
        assert {**ours["quantizer_kwargs"]} == expected, name
        assert build_quantizer(name, **reference[name]).codebook_storage == storage[name]


def test_ablation_configs_differ_from_their_reference_in_one_thing_only(section):
    cfg = {n: tokenizer_pipe.tokenizer_config(section, n) for n in section["configs"]}
    def diff(a, b):
        keys = set(cfg[a]) | set(cfg[b])
        return sorted(k for k in keys - {"name"} if cfg[a].get(k) != cfg[b].get(k))
    assert diff("movq_sinusoidal", "movq") == ["decoder_kwargs"]
    assert diff("movq_learned_constant", "movq") == ["decoder_kwargs"]
    assert diff("movq_plain", "movq") == ["decoder", "decoder_kwargs"]
    assert diff("movq_c1", "movq") == diff("movq_c2", "movq") == ["quantizer_kwargs"]
    assert diff("vq_16384", "vq") == ["quantizer_kwargs"]
    assert diff("m6_pq_style", "pq") == ["decoder"]
    # the generators' tokenizers are ablation configs trained longer, nothing else
    assert diff("vq_gen", "vq") == diff("m6_pq_style_gen", "m6_pq_style") == []


def test_muse_finetune_config_is_the_muse_decoder_of_its_base(section):
    for name, ft in section["finetunes"].items():
        base = Tokenizer(tokenizer_pipe.tokenizer_config(section, ft["base"]))
        wide = Tokenizer(tokenizer_pipe.tokenizer_config(section, name))
        assert decoder_config(wide.decoder) == decoder_config(build_muse_decoder(base.decoder, ft["width_mult"], ft["depth_mult"]))
        assert wide.encoder.state_dict().keys() == base.encoder.state_dict().keys()
        assert wide.token_shape == base.token_shape and wide.vocab_size == base.vocab_size


def test_finetune_keeps_tokens_and_trains_only_the_decoder(tmp_path):
    small = dict(ch=8, z_dim=16, quantizer="vq", quantizer_kwargs={"codebook_size": 16})
    base = Tokenizer(small).eval()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tok, hist = finetune_decoder(base, x, tmp_path / "ft.safetensors", steps=3, batch_size=4, perceptual_weight=0.0,
                                 gan_start=100, progress=False, name="ft")
    assert len(hist) == 3 and tok.config["decoder_kwargs"] == {"ch": 16, "num_res_blocks": 2}
    assert torch.equal(tok.tokenize(x), base.tokenize(x))
    for k, v in tok.encoder.state_dict().items():
        assert torch.equal(v, before[f"encoder.{k}"]), k
    for k, v in tok.quantizer.state_dict().items():
        assert torch.equal(v, before[f"quantizer.{k}"]), k


def test_profiles_name_every_config_and_smoke_is_small():
    for profile in params.PROFILES:
        s = params.load(profile)["tokenizers"]
        assert set(s["steps"]) == set(tokenizer_cfg.all_names(s))
    smoke = params.load("smoke")["tokenizers"]
    active = [n for n in tokenizer_cfg.all_names(smoke) if tokenizer_cfg.is_active(smoke, n)]
    assert 1 <= len(active) <= 4 and max(smoke["steps"].values()) <= 50
    default = params.load("default")["tokenizers"]
    assert all(tokenizer_cfg.is_active(default, n) for n in tokenizer_cfg.all_names(default)), "the default profile runs every table row"
    # the Table 1 comparison is only fair at equal steps
    assert len({default["steps"][n] for n in EQUAL_STORAGE}) == 1


def test_generators_use_tokenizers_trained_longer_than_the_ablations():
    # At the ablations' step count the decoders repaint colours, so no text-to-image model could learn
    # colour from those tokens (issue 5: the M6 rows' colour accuracy was ~0.33 on m6_pq_style).
    full = params.load("default")
    steps = full["tokenizers"]["steps"]
    ablation = steps["vq"]
    for model in ("muse", "ar", "m6"):
        name = full["generation"]["models"][model]["tokenizer"]
        assert steps[name] >= 4 * ablation, (model, name, steps[name])


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["tokenizers"]["configs"]["vq"].__setitem__("quantizer", "vqq"),
     r"tokenizers\.configs\.vq\.quantizer: must be one of vq, rq, pq, movq, got 'vqq'"),
    (lambda r: r["tokenizers"]["configs"]["pq"].__setitem__("codebok", 3),
     r"tokenizers\.configs\.pq\.codebok: unknown key"),
    (lambda r: r["tokenizers"].__setitem__("gan_start", 1.5),
     r"tokenizers\.gan_start: must be in \[0\.0, 1\.0\], got 1\.5"),
    (lambda r: r["profiles"]["smoke"]["tokenizers"]["steps"].__setitem__("vq", -1),
     r"tokenizers\.steps\.vq: must be in \[0, "),
    (lambda r: r["profiles"]["smoke"]["tokenizers"]["steps"].pop("movq_c2"),
     r"tokenizers\.steps\.movq_c2: missing"),
    (lambda r: r["tokenizers"]["finetunes"]["muse_vq"].__setitem__("base", "nope"),
     r"tokenizers\.finetunes\.muse_vq\.base: 'nope' is not in tokenizers\.configs"),
    (lambda r: r["profiles"]["smoke"]["tokenizers"]["steps"].update(muse_vq=5, vq=0),
     r"tokenizers\.steps\.muse_vq: fine-tunes 'vq', which this profile does not train"),
    (lambda r: r["tokenizers"]["configs"].__setitem__("Bad-Name", r["tokenizers"]["configs"]["vq"]),
     r"tokenizers\.configs\.Bad-Name: names must match"),
    (lambda r: r["profiles"]["smoke"]["tokenizers"].__setitem__("lr", 0.1),
     r"profiles\.smoke\.tokenizers\.lr: a profile may set only steps, rfid_n, eval_n"),
    (lambda r: r["tokenizers"].__setitem__("rfid_n", 100),
     r"tokenizers\.rfid_n: set it per profile"),
])
def test_bad_tokenizer_values_are_named(params_file, edit, message):
    _edit(params_file, edit)
    with pytest.raises(AtelierInputError, match=message):
        params.load("smoke", params_file)


def test_unknown_name_is_refused(section):
    with pytest.raises(AtelierInputError, match=r"no tokenizer named 'vqgan'.*known: vq, rq"):
        tokenizer_pipe.tokenizer_config(section, "vqgan")


def test_skipped_stage_writes_every_output_quickly():
    smoke = params.load("smoke")["tokenizers"]
    name = next(n for n in tokenizer_cfg.all_names(smoke) if not tokenizer_cfg.is_active(smoke, n))
    assert T.run_stage("notebooks/02a_tokenizer.ipynb", "smoke", name) == 0
    saved = read_json(tokenizer_store.metrics_path(name))
    assert saved["metrics"]["skipped"] is True and saved["provenance"]["profile"] == "smoke"
    assert json.loads((tokenizer_store.metrics_path(name).parent / "loss.json").read_text()) == []
    assert T.figure_path(name).is_file() and T.executed_notebook_path(name).is_file()
    assert (tokenizer_store.checkpoint_path(name).parent / tokenizer_store.SKIPPED_MARKER).is_file()


def test_a_checkpoint_of_another_run_length_is_not_resumed(tmp_path):
    tok = Tokenizer(dict(ch=8, z_dim=16, quantizer="vq", quantizer_kwargs={"codebook_size": 16}))
    ckpt = tmp_path / "t.safetensors"
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    train_tokenizer(tok, x, ckpt, steps=2, batch_size=4, perceptual_weight=0.0, gan_start=100, progress=False)
    with pytest.raises(AtelierInputError, match=r"checkpoint of a 2-step run, this run has 3 steps"):
        train_tokenizer(tok, x, ckpt, steps=3, batch_size=4, perceptual_weight=0.0, gan_start=100, progress=False)

