"""UniFashion stage driver (lib/stages/unifashion.py): settings, image selection, the four stages end to end on a
tiny dataset, the real Fashion-IQ loader on fixture files, table rows, caption attribute checks."""

from __future__ import annotations

import copy
import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import lib.config as lib_params
import lib.evaluation.unifashion as unifashion_eval
import lib.pipelines.unifashion as unifashion_parts
import lib.store.unifashion as unifashion_store
from lib import store
from lib.evaluation import unifashion as E
from lib.io import AtelierInputError
from lib.retrieval.caption_decoder import tokenize_words
from lib.stages import unifashion as U
from lib.store import data_dir, repo_root

torch.set_num_threads(1)

TINY = {
    "image_size": 32, "out_index": 4, "modification_max_length": 12, "cmr_split": "test", "composed_split": "test",
    "qformer": {"num_queries": 4, "dim": 32, "num_layers": 1, "heads": 2, "embed_dim": 16, "cross_every": 1,
                "ffn_mult": 2, "dropout": 0.0},
    "decoder": {"dim": 32, "num_layers": 1, "heads": 2, "num_prefix": 1, "max_len": 12},
    "instruction": "fashiongen", "batch_size": 8, "lr": {"phase1": 0.001, "captioner": 0.003, "phase2": 0.001},
    "warmup_fraction": 0.1, "itg_weight": 1.0, "loss_weights": [1.0, 1.0, 1.0], "caption_weight": 1.0,
    "generator": {"model": "muse", "lr": 0.001, "finetune": True, "cond_drop": 0.1, "guidance_scale": 2.0},
    "generation_weight": 1.0,
}
TINY_PROFILE = {"steps": {"phase1": 3, "captioner": 3, "generator": 3, "phase2": 2, "phase2_base": 2},
                "train_images": 120, "train_triplets_per_category": 10, "cmr_images": 100, "random_negatives": 2,
                "composed_queries": None, "caption_eval_n": 20, "generation_eval_n": 9}


def _params_file(tmp_path, shared=None, per_profile=None):
    """The repository's params.yaml with the given ``retrieval`` blocks (every profile gets ``per_profile``)."""
    raw = yaml.safe_load((repo_root() / "params.yaml").read_text())
    raw["unifashion"] = copy.deepcopy(TINY if shared is None else shared)
    for name in raw["profiles"]:
        raw["profiles"][name]["unifashion"] = copy.deepcopy(TINY_PROFILE if per_profile is None else per_profile)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
def test_settings_read_through_lib_params_and_validate(tmp_path, monkeypatch):
    path = _params_file(tmp_path)
    R = U.settings(lib_params.load_params("smoke", path))
    assert R["qformer"]["dim"] == 32 and R["steps"] == TINY_PROFILE["steps"]
    monkeypatch.setenv(lib_params.ENV_PARAMS, str(path))  # the notebooks' route to a test params file
    assert U.settings(lib_params.load_params("default")) == R
    assert U.warmup_steps(R, 100) == 10 and U.warmup_steps(R, 3) == 1

    bad = copy.deepcopy(TINY)
    del bad["lr"]["phase2"]
    bad["qformer"]["heads"] = "two"
    bad["colour"] = 1
    prof = {**TINY_PROFILE, "composed_queries": 0, "steps": {**TINY_PROFILE["steps"], "phase1": 0}}
    with pytest.raises(AtelierInputError) as err:
        U.settings(lib_params.load_params("smoke", _params_file(tmp_path, bad, prof)))
    msg = str(err.value)
    for part in ("unifashion.lr.phase2: missing", "unifashion.qformer.heads: must be an integer, got str",
                 "unifashion.colour: unknown parameter", "unifashion.composed_queries: must be in [1,",
                 "unifashion.steps.phase1: must be in [1,", "profile 'smoke'"):
        assert part in msg, (part, msg)
    odd = {**copy.deepcopy(TINY), "image_size": 40}
    odd["qformer"]["heads"] = 3
    with pytest.raises(AtelierInputError, match=r"(?s)qformer\.dim: 32 must be divisible.*image_size: 40 must be a "
                                                r"multiple of 16"):
        U.settings(lib_params.load_params("smoke", _params_file(tmp_path, odd)))
    with pytest.raises(AtelierInputError, match="section 'unifashion' missing"):
        U.settings({"profile": "smoke"})


def test_repository_params_retrieval_section_validates_in_every_profile():
    import lib.config as params

    if "unifashion" not in params.read():
        pytest.skip("params.yaml has no retrieval section yet (see /work/notes/issue6_dvc_params.md)")
    for profile in params.PROFILES:
        R = U.settings(params.load(profile))
        assert R["steps"]["phase1"] >= 1


# ------------------------------------------------------------------------------------------------
# which train images
# ------------------------------------------------------------------------------------------------
def test_select_train_images_keeps_triplet_images_and_fills_at_random():
    from lib.data.fashioniq import Triplet

    names = [f"im{i}" for i in range(40)]
    trips = {"dress": [Triplet("im1", "im2", ("a",)), Triplet("im3", "im2", ("b",)), Triplet("im5", "im6", ("c",))],
             "shirt": [Triplet("im30", "im31", ("d",))]}
    rows, kept = U.select_train_images(names, trips, train_images=10, triplets_per_category=2, seed=0)
    assert kept == {"dress": 2, "shirt": 1}
    assert len(rows) == 10 and list(rows) == sorted(set(rows.tolist()))
    assert {1, 2, 3, 30, 31} <= set(rows.tolist())
    again, _ = U.select_train_images(names, trips, train_images=10, triplets_per_category=2, seed=0)
    other, _ = U.select_train_images(names, trips, train_images=10, triplets_per_category=2, seed=1)
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)
    with pytest.raises(AtelierInputError, match=r"train_images = 4 is smaller than the 5 images"):
        U.select_train_images(names, trips, train_images=4, triplets_per_category=2, seed=0)
    with pytest.raises(AtelierInputError, match="'nope' \\(shirt\\) is not in the train split"):
        U.select_train_images(names, {"shirt": [Triplet("nope", "im1", ("x",))]}, 10, 1, 0)


# ------------------------------------------------------------------------------------------------
# stand-ins for the frozen networks (the real ones are tested in test_retrieval / test_generation)
# ------------------------------------------------------------------------------------------------
class TinyExtractor(torch.nn.Module):
    """Frozen random 8x8-patch embedding of images resized to 32x32: ``[B, 16, 6]``."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 8, stride=8)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.1)
            self.conv.bias.zero_()
        self.requires_grad_(False)

    @property
    def arch(self):
        return {"source": "test", "network": "tiny_patch_embedding"}

    @torch.no_grad()
    def forward(self, x):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return self.conv(x).flatten(2).transpose(1, 2)


class PatchTokenizer(torch.nn.Module):
    """A stand-in tokenizer: the mean grey level of each 8x8 patch of a 32x32 image, in 8 bins -> 4x4x1 tokens."""

    token_shape, vocab_size = (4, 4, 1), 8

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def tokenize(self, x):
        grey = F.avg_pool2d(x.mean(1, keepdim=True), 8)  # [b, 1, 4, 4] in [-1, 1]
        return ((grey + 1) / 2 * 8).long().clamp(0, 7).permute(0, 2, 3, 1)

    @torch.no_grad()
    def decode_indices(self, idx):
        grey = (idx.permute(0, 3, 1, 2).float() + 0.5) / 8 * 2 - 1
        return F.interpolate(grey, scale_factor=8).repeat(1, 3, 1, 1)


def tiny_backbone(P, R):
    from lib.generation import MaskedTokenTransformer, TransformerConfig

    torch.manual_seed(0)
    model = MaskedTokenTransformer(TransformerConfig(grid_h=4, grid_w=4, channels=1, codebook_size=8, dim=32, depth=1,
                                                     heads=2, text_mode="cross_attention", max_text_len=12))
    tok = PatchTokenizer()
    return model, tok, tok


class HashEncoder:
    """Deterministic text "encoder": a fixed random 384-vector per word, a constant first ([CLS]) token."""

    def __init__(self, max_length=12):
        self.max_length = max_length

    def encode(self, texts, batch_size=256, progress=False):
        tokens = torch.zeros(len(texts), self.max_length, 384)
        mask = torch.zeros(len(texts), self.max_length, dtype=torch.bool)
        for i, text in enumerate(texts):
            words = ["[cls]"] + tokenize_words(text)[:self.max_length - 1]
            for j, w in enumerate(words):
                tokens[i, j] = torch.randn(384, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
            mask[i, :len(words)] = True
        return {"tokens": tokens, "mask": mask, "pooled": F.normalize(tokens.sum(1), dim=-1)}


# ------------------------------------------------------------------------------------------------
# the four stages end to end on a tiny dataset
# ------------------------------------------------------------------------------------------------
def test_stages_end_to_end_on_a_tiny_dataset(tmp_path, monkeypatch):
    import lib.pipelines.generators as generator_pipe
    import lib.store.generators as generator_store
    from lib.data.build import build_caption_dataset
    from lib.generation import TextFeatureTable
    from lib.metrics import captions as caption_metrics
    from lib.text.cache import caption_index

    fmnist = data_dir() / "fashion-mnist"
    if not fmnist.is_dir():
        pytest.skip(f"{fmnist}: Fashion-MNIST not present (reproduce/run fetches it)")
    build_caption_dataset(fmnist, store.caption_root(), max_per_split={"train": 300, "val": 40, "test": 100})
    path = _params_file(tmp_path)
    # the stage module and lib.pipelines.unifashion (where they live) both call them
    for module in (U, unifashion_parts):
        monkeypatch.setattr(module, "feature_extractor", lambda R: TinyExtractor())
        monkeypatch.setattr(module, "modification_encoder", lambda R: HashEncoder(R["modification_max_length"]))
        monkeypatch.setattr(module, "generation_backbone", tiny_backbone)

    def fake_text_table(progress=False):  # the text_features stage, with the hash encoder
        texts, ids = caption_index(generator_pipe.load_captions())
        table = TextFeatureTable.build(texts, generator_store.text_table_path(), encoder=HashEncoder(10), progress=False)
        return table, {s: torch.from_numpy(v) for s, v in ids.items()}

    monkeypatch.setattr(unifashion_parts, "text_table", fake_text_table)  # read by Workspace.load
    with pytest.raises(AtelierInputError, match="run the unifashion_features stage first"):
        U.run("phase1", "smoke", path, progress=False)
    fake_text_table()
    # no Java: caption metrics must be reported as unavailable, not crash the stage
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)

    feats = U.run("features", "smoke", path, progress=False)
    sel = json.loads(unifashion_store.selection_path().read_text())
    assert feats["images"]["train"] == 120 and feats["feature_shape"] == [16, 6]
    assert len(sel["names"]["test"]) == len(sel["rows"]["test"]) >= 100
    with pytest.raises(AtelierInputError, match="run the unifashion_generator stage first"):
        for phase in ("phase1", "captioner", "phase2"):
            U.run(phase, "smoke", path, progress=False)
    # the generator stage reads the backbone tokenizer's token cache (stage tokens@vq_gen), here of
    # the stand-in tokenizer; no checkpoint of vq_gen exists, so load() has nothing to check it against
    from lib.stages import tokens as TOK

    with pytest.raises(AtelierInputError, match="no token cache for tokenizer 'vq_gen'"):
        U.run("generator", "smoke", path, progress=False)
    TOK.write(PatchTokenizer(), "vq_gen", "stand-in")
    with monkeypatch.context() as m:
        m.setattr(PatchTokenizer, "tokenize", lambda self, x: pytest.fail("the generator stage tokenized images"))
        U.run("generator", "smoke", path, progress=False)
    U.run("phase2", "smoke", path, progress=False)
    for phase in unifashion_store.PHASES:
        doc = json.loads(unifashion_store.metrics_path(phase).read_text())
        assert doc["provenance"]["profile"] == "smoke" and doc["provenance"]["phase"] == phase
    p1 = json.loads(unifashion_store.metrics_path("phase1").read_text())["metrics"]
    assert p1["steps"] == 3 and set(p1["cross_modal"]) >= {"image_to_text", "text_to_image", "mean_random100"}
    assert [row["step"] for row in json.loads(unifashion_store.loss_path("phase1").read_text())] == [1, 2, 3]
    cap = json.loads(unifashion_store.metrics_path("captioner").read_text())["metrics"]
    assert cap["heldout"]["BLEU-4"] is None and cap["heldout"]["num_images"] == 20
    p2 = json.loads(unifashion_store.metrics_path("phase2").read_text())["metrics"]
    assert p2["full"]["itg_weight"] == 1.0 and p2["full"]["final"]["itg"] is not None
    assert p2["base"]["itg_weight"] == 0.0 and p2["base"]["final"]["itg"] is None
    assert p2["full"]["generation_weight"] == 1.0 and p2["full"]["final"]["q2i"] is not None
    assert p2["base"]["final"]["q2i"] is None
    qg = json.loads(unifashion_store.metrics_path("generator").read_text())["metrics"]
    assert qg["steps"] == 3 and qg["train_images"] == 120 and qg["finetune_generator"] is True
    assert set(qg["heldout"]) >= {"acc_from_queries", "acc_null_condition"}
    assert set(p2["full"]["composed_summary"]) == {"full", "image only", "text only"}
    assert unifashion_store.loss_path("phase2", "base").is_file()

    # the checkpoints the notebooks load: phase 2 starts from phase 1, the base run differs from the full one
    q1, q2, qb = unifashion_parts.load_trained("phase1"), unifashion_parts.load_trained("phase2"), unifashion_parts.load_trained("phase2", base=True)
    assert q1.hparams == q2.hparams == qb.hparams
    assert not torch.equal(q2.query_tokens, qb.query_tokens) and not torch.equal(q1.query_tokens, q2.query_tokens)
    decoder = unifashion_parts.load_trained("captioner")
    assert decoder.instructions and "fashiongen" in decoder.instructions

    # what the notebooks evaluate
    ws = unifashion_parts.Workspace.load(lib_params.load_params("smoke", path))
    cmr = ws.cmr_inputs()
    assert cmr["image_feats"].shape == (100, 16, 6) and len(cmr["texts"]) == 300
    assert torch.equal(cmr["text_image"][:6], torch.tensor([0, 0, 0, 1, 1, 1]))
    cats = ws.composed_categories()
    assert set(cats) == {"dress", "shirt", "toptee"}
    for cat, data in cats.items():
        assert len(data["texts"]) == len(data["target_ids"]) == data["text_tokens"].shape[0]
        assert data["gallery_feats"].shape[0] == len(data["gallery_ids"])
    captions = E.gallery_captions(q1, decoder, cats, ws.R)
    assert all(len(captions[c]) == len(cats[c]["gallery_ids"]) for c in cats)
    with_caps = E.with_caption_embeddings(q2, cats, captions, HashEncoder(10).encode)
    res = E.composed(q2, with_caps, ws.R, variants=("full", "w/ cap", "w/o img"))
    assert set(res["summary"]) == {"full", "w/ cap", "w/o img"}
    # any garment of the target's composition counts: never below the target-only recall
    loose = E.composition_recall(q2, cats, ws.composition_of("test"), variants=("full",), ks=(10, 50))
    for cat in cats:
        for k in ("R@10", "R@50"):
            assert loose["full"]["per_category"][cat][k] >= res["per_category"][cat]["full"][k] - 1e-9
    # bootstrap over queries: replicates beside the averages, the same resampled queries for every variant
    boot = E.composition_recall(q2, cats, ws.composition_of("test"), variants=("full", "image only"), ks=(10, 50),
                                bootstrap={"resamples": 40, "seed": 0})
    for v in ("full", "image only"):
        reps = boot[v]["average"]["bootstrap"]
        assert set(reps) == {"R@10", "R@50"} and all(len(r) == 40 for r in reps.values())
        assert all(0.0 <= x <= 1.0 for x in reps["R@10"]) and min(reps["R@10"]) <= max(reps["R@10"])
        assert {k: x for k, x in boot[v]["average"].items() if k != "bootstrap"} == \
            {k: x for k, x in E.composition_recall(q2, cats, ws.composition_of("test"), variants=(v,),
                                                   ks=(10, 50))[v]["average"].items()}
        assert all(r50 >= r10 for r10, r50 in zip(reps["R@10"], reps["R@50"]))  # same resamples for every K
    assert boot["full"]["average"]["bootstrap"] == E.composition_recall(
        q2, cats, ws.composition_of("test"), variants=("full",), ks=(10, 50),
        bootstrap={"resamples": 40, "seed": 0})["full"]["average"]["bootstrap"]  # deterministic
    top = E.composed_topk(q2, cats["dress"], k=3, queries=[0])[0]
    assert len(top["top"]) == 3 and top["reference"] not in top["top"]
    fig = E.composed_figure(ws, [top], "test", title="t")
    fig2 = E.text_to_image_figure(cmr, E.text_to_image_topk(q2, cmr, [0, 3], k=2), title="t")
    assert len(fig.axes) == 1 and len(fig2.axes) == 2

    # composed image generation: queries round-robin over categories, images from q_R through the generator
    total = sum(len(d["target_ids"]) for d in cats.values())
    assert len(E.composed_generation_inputs(ws, total + 5)["texts"]) == total  # never more than there are
    inputs = E.composed_generation_inputs(ws, 6)
    assert inputs["categories"][:3] == list(cats) and len(inputs["texts"]) == 6
    assert inputs["target_ids"][0] == cats["dress"]["target_ids"][0]
    assert ws.arrays["test"]["names"][inputs["target_rows"][0]] == inputs["target_ids"][0]
    qgen = unifashion_parts.load_trained("generator")
    q_comp, q_ref = E.composed_queries(q2, inputs, "composed"), E.composed_queries(q2, inputs, "reference")
    assert q_comp.shape == q_ref.shape == (6, 4, 32) and not torch.allclose(q_comp, q_ref)
    out = E.generate_from_queries(qgen, tok := PatchTokenizer(), q_comp, {"maskgit_steps": 4}, 2.0, seed=0)
    assert out["images"].shape == (6, 3, 32, 32) and out["tokens"].shape == (6, 16, 1)
    again = E.generate_from_queries(qgen, tok, q_comp, {"maskgit_steps": 4}, 2.0, seed=0)
    assert torch.equal(out["tokens"], again["tokens"])  # seeded
    fig3 = E.composed_generation_figure(ws, inputs, {"composed": out["images"]}, [0, 1], title="t")
    assert len(fig3.axes) == 2


# ------------------------------------------------------------------------------------------------
# the real Fashion-IQ loader on fixture files, evaluated end to end
# ------------------------------------------------------------------------------------------------
def _write_fashioniq_fixture(root):
    """Real Fashion-IQ layout: captions/cap.<cat>.<split>.json, image_splits/split.<cat>.<split>.json, images/.
    Images are JPEG and PNG of different sizes, as in the real release."""
    rng = np.random.default_rng(0)
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "images").mkdir()
    galleries = {"dress": [f"B00D{i}" for i in range(6)], "shirt": [f"B00S{i}" for i in range(5)]}
    triplets = {
        "dress": [{"candidate": "B00D0", "target": "B00D3", "captions": ["is red", "has stripes"]},
                  {"candidate": "B00D1", "target": "B00D4", "captions": ["is shorter", "is blue and plain"]},
                  {"candidate": "B00D2", "target": "B00D5", "captions": ["is longer", "has dots"]},
                  {"candidate": "B00D5", "captions": ["withheld target", "as in the official test split"]}],
        "shirt": [{"candidate": "B00S0", "target": "B00S1", "captions": ["is green", "has no pattern"]},
                  {"candidate": "B00S2", "target": "B00S2", "captions": ["is the same", "keeps the colour"]},
                  {"candidate": "B00S3", "target": "B00S4", "captions": ["has checks", "is checked"]}],
    }
    for cat, ids in galleries.items():
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(triplets[cat]))
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(ids))
        for k, image_id in enumerate(ids):
            size = (40, 30) if k % 2 else (24, 24)
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"{image_id}.{'jpg' if k % 2 else 'png'}")
    return galleries, triplets


def test_real_fashioniq_loader_runs_composed_recall_matching_a_hand_computation(tmp_path):
    from lib.retrieval.evaluate import composed_recall
    from lib.retrieval.features import images_to_float
    from lib.retrieval.qformer import QFormer

    root = tmp_path / "fashion-iq"
    galleries, triplets = _write_fashioniq_fixture(root)
    extractor, encoder = TinyExtractor(), HashEncoder(8)
    cats = unifashion_parts.real_fashioniq_inputs(root, "val", extractor, encoder.encode, image_size=32,
                                   categories=("dress", "shirt"))
    assert cats["dress"]["target_ids"] == ["B00D3", "B00D4", "B00D5"]  # the withheld-target triplet is dropped
    assert cats["dress"]["texts"][1] == "is shorter and is blue and plain"
    assert cats["shirt"]["gallery_ids"] == galleries["shirt"]
    # features are the extractor's output on the image files, resized to 32x32
    with Image.open(root / "images" / "B00D1.jpg") as img:
        b00d1 = np.array(img.convert("RGB").resize((32, 32), Image.BICUBIC))[None]
    assert torch.allclose(cats["dress"]["reference_feats"][1].float(), extractor(images_to_float(b00d1))[0], atol=2e-3)
    assert torch.equal(cats["dress"]["text_tokens"][2], encoder.encode(["is longer and has dots"])["tokens"][0])

    torch.manual_seed(0)
    model = QFormer(image_dim=6, num_image_tokens=16, num_queries=3, dim=16, num_layers=1, heads=2, embed_dim=8).eval()
    res = composed_recall(model, cats, variants=("full", "image only", "text only"), ks=(1, 2), exclude_reference=True)
    paper = composed_recall(model, cats, variants=("full", "image only", "text only"), ks=(1, 2))

    def hand(data, variant, exclude=True):
        """Rank of each target by plain loops: similarity = max over the gallery image's query embeddings;
        with ``exclude`` the reference is removed unless it is the target; ties count against the target."""
        with torch.no_grad():
            gallery = model.image_embeds(data["gallery_feats"].float())
            if variant == "full":
                queries = model.composed_embed(data["reference_feats"].float(), data["text_tokens"].float(),
                                               data["text_mask"])
            elif variant == "text only":
                queries = model.text_embed(data["text_tokens"].float(), data["text_mask"])
            else:
                queries = F.normalize(model.image_embeds(data["reference_feats"].float()).mean(1), dim=-1)
        hits = {1: 0, 2: 0}
        for qi, query in enumerate(queries):
            scores = {}
            for gi, gid in enumerate(data["gallery_ids"]):
                if exclude and gid == data["reference_ids"][qi] and gid != data["target_ids"][qi]:
                    continue
                scores[gid] = max(float(query @ gallery[gi, j]) for j in range(gallery.shape[1]))
            target = scores[data["target_ids"][qi]]
            rank = sum(1 for gid, s in scores.items() if gid != data["target_ids"][qi] and s >= target)
            for k in hits:
                hits[k] += rank < k
        return {k: v / len(queries) for k, v in hits.items()}

    for cat in ("dress", "shirt"):
        for variant in ("full", "image only", "text only"):
            got = res["per_category"][cat][variant]
            want = hand(cats[cat], variant)
            assert got["R@1"] == pytest.approx(want[1], abs=1e-6) and got["R@2"] == pytest.approx(want[2], abs=1e-6)
            assert got["num_queries"] == 3 and got["num_gallery"] == len(galleries[cat])
            full = paper["per_category"][cat][variant]
            want = hand(cats[cat], variant, exclude=False)
            assert full["R@1"] == pytest.approx(want[1], abs=1e-6) and full["R@2"] == pytest.approx(want[2], abs=1e-6)
            assert full["num_reference_excluded"] == 0
    # the shirt query whose target is its own reference keeps it; the others exclude theirs
    assert res["per_category"]["shirt"]["full"]["num_reference_excluded"] == 2
    # the notebook's call: Table 4 with replicates of Avg per variant, the per-query ranks dropped
    boot = E.composed(model, cats, {"caption_weight": 1.0}, variants=("full", "image only"),
                      bootstrap={"resamples": 50, "seed": 0})
    assert set(boot["bootstrap"]) == {"full", "image only"} and len(boot["bootstrap"]["full"]) == 50
    assert all("ranks" not in r for per in boot["per_category"].values() for r in per.values())
    assert min(boot["bootstrap"]["full"]) <= boot["summary"]["full"]["Avg"] <= max(boot["bootstrap"]["full"])
    assert res["summary"]["full"]["average"]["R@2"] == pytest.approx(
        (res["per_category"]["dress"]["full"]["R@2"] + res["per_category"]["shirt"]["full"]["R@2"]) / 2)
    with pytest.raises(AtelierInputError, match="category must be one of"):
        unifashion_parts.real_fashioniq_inputs(root, "val", extractor, encoder.encode, categories=("skirt",))


# ------------------------------------------------------------------------------------------------
# table rows, caption attributes, frames
# ------------------------------------------------------------------------------------------------
def test_table_rows_use_the_paper_columns_and_percentages():
    from lib.evaluation.tables import load_paper_table

    side = {"full": {"R@1": 0.5, "R@5": 0.75, "R@10": 1.0}, "random100": {"R@1": 0.25, "R@5": 0.5, "R@10": 0.75}}
    cmr = {"image_to_text": side, "text_to_image": side, "mean_full": 0.75, "mean_random100": 0.5}
    row1 = E.table1_row(cmr, "random100")
    assert row1 == {"I2T R@1": 25.0, "I2T R@5": 50.0, "I2T R@10": 75.0, "T2I R@1": 25.0, "T2I R@5": 50.0,
                    "T2I R@10": 75.0, "Mean": 50.0}
    paper1 = load_paper_table("unifashion", "table1")
    assert set(row1) == set(paper1.attrs["better"])
    summary = {"per_category": {"dress": {"R@10": 0.1, "R@50": 0.5}, "shirt": {"R@10": 0.2, "R@50": 0.6},
                                "toptee": {"R@10": 0.3, "R@50": 0.7}},
               "average": {"R@10": 0.2, "R@50": 0.6}, "Avg": 0.4}
    row4 = E.table4_row(summary)
    assert set(row4) == set(load_paper_table("unifashion", "table4").attrs["better"])
    assert row4["Shirt R@50"] == pytest.approx(60.0) and row4["Avg."] == pytest.approx(40.0)


def test_caption_attribute_accuracy_reads_synonyms_and_rejects_wrong_or_double_attributes():
    from lib.data.attributes import CATEGORY_NAMES, COLOUR_NAMES, PATTERN_NAMES

    def arr(items):
        return {"category": np.array([CATEGORY_NAMES.index(c) for c, _, _ in items]),
                "colour": np.array([COLOUR_NAMES.index(k) for _, k, _ in items]),
                "pattern": np.array([PATTERN_NAMES.index(p) for _, _, p in items])}

    truth = arr([("shirt", "red", "striped"), ("t-shirt", "blue", "plain"), ("ankle boot", "pink", "checked"),
                 ("dress", "green", "dotted"), ("shirt", "black", "plain")])
    captions = ["a red pinstriped blouse",          # all right (synonyms)
                "a blue tee",                       # plain garment: no pattern named is right
                "this ankle boot is pink and plaid",  # "boot" inside "ankle boot": one category
                "a green t-shirt with stripes",     # category wrong ("shirt" inside "t-shirt" does not count), pattern wrong
                "a black and red shirt"]            # two colours: colour wrong
    acc = E.caption_attribute_accuracy(captions, truth, range(5))
    assert acc["acc_category"] == pytest.approx(4 / 5) and acc["acc_colour"] == pytest.approx(4 / 5)
    assert acc["acc_pattern"] == pytest.approx(4 / 5) and acc["acc_joint"] == pytest.approx(3 / 5)
    assert acc["num_captions"] == 5


def test_framed_marks_only_the_chosen_images():
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    out = E.framed(images, [False, True, False], colour=(1, 2, 3), width=1)
    assert out[0].sum() == 0 and out[2].sum() == 0 and images.sum() == 0
    assert tuple(out[1, 0, 4]) == (1, 2, 3) and tuple(out[1, 4, 7]) == (1, 2, 3) and out[1, 1:7, 1:7].sum() == 0


def test_composition_caption_ids_share_captions_within_a_composition():
    ids = unifashion_parts.composition_caption_ids(np.array([5, 7, 5]), torch.tensor([[0, 1], [2, 3], [1, 4]]))
    assert ids.tolist() == [[0, 1, 4], [2, 3, 2], [0, 1, 4]]
    arrays = {"category": np.array([3, 3]), "colour": np.array([0, 9]), "pattern": np.array([1, 1])}
    assert unifashion_parts.composition_ids(arrays, np.array([0, 1])).tolist() == [301, 391]
    with pytest.raises(AtelierInputError, match="2 compositions for 3 caption rows"):
        unifashion_parts.composition_caption_ids(np.array([1, 2]), torch.zeros(3, 2, dtype=torch.long))


def test_a_test_gallery_naming_a_train_image_is_refused_by_the_stage_command(tmp_path):
    """Issue 18: a Fashion-IQ test gallery listing a train image whose file exists used to end the
    features stage in a bare ``KeyError``; the stage command now exits with one line naming the
    split file and the id."""
    import os
    import subprocess
    import sys

    from lib.data.build import build_caption_dataset
    from lib.store import out_root

    fmnist = data_dir() / "fashion-mnist"
    if not fmnist.is_dir():
        pytest.skip(f"{fmnist}: Fashion-MNIST not present (reproduce/run fetches it)")
    build_caption_dataset(fmnist, store.caption_root(), max_per_split={"train": 300, "val": 40, "test": 100})
    fiq = store.caption_root() / "fashioniq"
    train_ids = json.loads((fiq / "image_splits" / "split.dress.train.json").read_text())
    assert (fiq / "images" / f"{train_ids[0]}.png").is_file()  # the image exists: only its split is wrong
    gallery_file = fiq / "image_splits" / "split.dress.test.json"
    gallery_file.write_text(json.dumps(json.loads(gallery_file.read_text()) + [train_ids[0]]))
    proc = subprocess.run([sys.executable, "-m", "lib.stages.unifashion", "features", "--profile", "smoke",
                           "--params", str(_params_file(tmp_path))], cwd=repo_root(), capture_output=True,
                          text=True, timeout=300, env={**os.environ, "ATELIER_OUT": str(out_root())})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "KeyError" not in proc.stderr, proc.stderr[-2000:]
    assert "split.dress.test.json" in lines[0] and train_ids[0] in lines[0] and "'test' split" in lines[0]


def test_composed_replicates_resample_the_queries_paired_across_variants():
    """Table 5's "w/ cap" vs "w/o cap" ranks the same queries twice: its interval comes from
    resampling those queries, with the same draws for both rankings (issue 17)."""
    from lib.evaluation.unifashion import composed_replicates

    per_category = {"dress": {"w/o cap": {"ranks": [0, 20, 60, 5]}, "w/ cap": {"ranks": [0, 20, 60, 5]}},
                    "shirt": {"w/o cap": {"ranks": [100, 3]}, "w/ cap": {"ranks": [1, 3]}}}
    reps = composed_replicates(per_category, {"resamples": 400, "seed": 0})
    # Avg = mean over k of the category mean of R@k: (mean(2/4, 1/2) + mean(3/4, 1/2)) / 2 = 0.5625
    assert abs(np.mean(reps["w/o cap"]) - 0.5625) < 0.03 and len(reps["w/o cap"]) == 400
    # "w/ cap" ranks every query at least as well, so on the same resampled queries it never loses
    assert all(b >= a for a, b in zip(reps["w/o cap"], reps["w/ cap"]))
    assert any(b > a for a, b in zip(reps["w/o cap"], reps["w/ cap"]))
    assert "ranks" not in per_category["dress"]["w/ cap"], "per-query ranks must not reach the metrics JSON"
    with pytest.raises(AtelierInputError, match="no per-query ranks"):
        composed_replicates(per_category, {"resamples": 10, "seed": 0})
