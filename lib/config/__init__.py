"""``params.yaml``: profiles and their validation.

Each profile's parameters are the shared top-level sections deep-merged with
``profiles.<name>.<section>``. Sections with a schema below are checked strictly (unknown keys, wrong
types and out-of-range values are errors naming ``params.yaml`` and the dotted key), so a typo cannot
silently fall back to a default.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from lib.io import AtelierInputError, atomic_write_text
from lib.store import repo_root

PROFILES = ("smoke", "default", "gpu")
# Seeds are small non-negative integers (a typo such as an extra run of digits is refused, not used).
MAX_SEED = 10**8 - 1
# The side of every image the data stage renders (lib.data.render draws at it); tokenizers must match.
DATA_IMAGE_SIZE = 32


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key written twice.

    PyYAML keeps the last value silently; DVC refuses such a file, but stages run directly (as
    reproduce/test runs them) would train with whichever value came last.
    """

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} written twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _int(lo: int, hi: int | None = None, nullable: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer{' or null' if nullable else ''}, got {type(v).__name__} {v!r}"
        if v < lo or (hi is not None and v > hi):
            return f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}"
        return None
    return check


def _float(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {type(v).__name__} {v!r}"
        if not lo <= v <= hi:
            return f"must be in [{lo}, {hi}], got {v}"
        return None
    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {type(v).__name__} {v!r}"


def _int_list(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not v:
            return f"must be a non-empty list of integers, got {v!r}"
        for item in v:
            problem = _int(lo, hi)(item)
            if problem:
                return f"every entry {problem}"
        return None
    return check


def _mapping(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be a mapping, got {type(v).__name__} {v!r}"
    return None


# Named tokenizer configurations (lib/stages/tokenizer.py): what each entry may hold. Kept here (not in
# lib.models) so that validating params.yaml never imports torch.
TOKENIZER_NAME = r"^[a-z][a-z0-9_]*$"
QUANTIZER_KINDS = ("vq", "rq", "pq", "movq")
DECODER_KINDS = ("vqgan", "movq", "style")
TOKENIZER_CONFIG_KEYS = ("quantizer", "quantizer_kwargs", "decoder", "decoder_kwargs")
FINETUNE_KEYS = ("base", "width_mult", "depth_mult")


def _named(entry_check: Callable[[str, Any], list[str]], allow_empty: bool = False) -> Callable[[Any], list[str] | str | None]:
    """A checker for ``name -> entry`` mappings; returns one message per problem, each starting
    with the entry's name so :func:`validate` can report ``section.key.name.field``."""
    def check(v: Any) -> list[str] | str | None:
        if not isinstance(v, dict) or (not v and not allow_empty):
            return f"must be a {'' if allow_empty else 'non-empty '}mapping of name -> entry, got {v!r}"
        problems = []
        for name, entry in v.items():
            if not isinstance(name, str) or not re.match(TOKENIZER_NAME, name):
                problems.append(f"{name}: names must match {TOKENIZER_NAME} (they become paths and DVC keys)")
                continue
            problems += [f"{name}{msg}" for msg in entry_check(name, entry)]
        return problems
    return check


def _tokenizer_entry(name: str, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f": must be a mapping with {', '.join(TOKENIZER_CONFIG_KEYS)}, got {entry!r}"]
    problems = [f".{k}: unknown key (known: {', '.join(TOKENIZER_CONFIG_KEYS)})" for k in entry
                if k not in TOKENIZER_CONFIG_KEYS]
    if entry.get("quantizer") not in QUANTIZER_KINDS:
        problems.append(f".quantizer: must be one of {', '.join(QUANTIZER_KINDS)}, got {entry.get('quantizer')!r}")
    if entry.get("decoder") not in DECODER_KINDS:
        problems.append(f".decoder: must be one of {', '.join(DECODER_KINDS)}, got {entry.get('decoder')!r}")
    if not isinstance(entry.get("quantizer_kwargs"), dict):
        problems.append(f".quantizer_kwargs: must be a mapping, got {entry.get('quantizer_kwargs')!r}")
    if not isinstance(entry.get("decoder_kwargs", {}), dict):
        problems.append(f".decoder_kwargs: must be a mapping, got {entry.get('decoder_kwargs')!r}")
    return problems


def _finetune_entry(name: str, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f": must be a mapping with {', '.join(FINETUNE_KEYS)}, got {entry!r}"]
    problems = [f".{k}: unknown key (known: {', '.join(FINETUNE_KEYS)})" for k in entry if k not in FINETUNE_KEYS]
    problems += [f".{k}: missing" for k in FINETUNE_KEYS if k not in entry]
    if "base" in entry and not isinstance(entry["base"], str):
        problems.append(f".base: must name a config in tokenizers.configs, got {entry['base']!r}")
    for key in ("width_mult", "depth_mult"):
        if key in entry:
            problem = _int(1, 8)(entry[key])
            if problem:
                problems.append(f".{key}: {problem}")
    return problems


GENERATOR_KINDS = ("masked", "autoregressive")
TEXT_MODES = ("none", "cross_attention", "in_sequence")
GENERATOR_OBJECTIVES = ("muse", "m6", "class")
GENERATOR_KEYS = ("kind", "tokenizer", "decode_with", "text_mode", "objective", "max_visual_tokens",
                  "condition_mixture", "replicates", "seed")
#: a seed replica (issue 17: several training seeds per compared configuration) names the entry it
#: repeats and its own seed; it must equal that entry in every other key (checked below)
REPLICA_KEYS = ("replicates", "seed")
#: M6-Fashion Sec. 3.3's {v,t}, {v}, {t}, {} probabilities: the prose reading (text-only 0.55) or the
#: printed one ({v} 0.55); lib.generation.masking.COMBINATION_PROBS_PROSE / _PRINTED hold the numbers.
CONDITION_MIXTURES = ("prose", "printed")
SAMPLING_KEYS = {
    "maskgit_steps": None, "smart_T": None, "smart_alpha": None, "smart_beta": None, "temperature": None,
    "choice_temperature": None, "guidance_scale": None, "guidance_sweep": None, "top_k": None,
}


def _generator_entry(name: str, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f": must be a mapping with {', '.join(GENERATOR_KEYS)}, got {entry!r}"]
    problems = [f".{k}: unknown key (known: {', '.join(GENERATOR_KEYS)})" for k in entry if k not in GENERATOR_KEYS]
    for key, allowed in (("kind", GENERATOR_KINDS), ("text_mode", TEXT_MODES), ("objective", GENERATOR_OBJECTIVES)):
        if entry.get(key) not in allowed:
            problems.append(f".{key}: must be one of {', '.join(allowed)}, got {entry.get(key)!r}")
    if not isinstance(entry.get("tokenizer"), str):
        problems.append(f".tokenizer: must name a tokenizer in tokenizers.configs, got {entry.get('tokenizer')!r}")
    if "max_visual_tokens" in entry:
        problem = _int(0, 4096)(entry["max_visual_tokens"])
        if problem:
            problems.append(f".max_visual_tokens: {problem}")
        elif entry["max_visual_tokens"] > 0 and (entry.get("kind") != "masked" or entry.get("text_mode") != "in_sequence"):
            problems.append(".max_visual_tokens: visual conditions need kind masked and text_mode in_sequence (M6-Fashion)")
    if "condition_mixture" in entry:
        if entry["condition_mixture"] not in CONDITION_MIXTURES:
            problems.append(f".condition_mixture: must be one of {', '.join(CONDITION_MIXTURES)}, "
                            f"got {entry['condition_mixture']!r}")
        elif entry.get("objective") != "m6":
            problems.append(".condition_mixture: only the m6 objective samples condition combinations (M6-Fashion Sec. 3.3)")
    elif entry.get("objective") == "m6":
        problems.append(".condition_mixture: missing; the m6 objective needs prose or printed (M6-Fashion Sec. 3.3)")
    if ("replicates" in entry) != ("seed" in entry):
        problems.append(": a seed replica needs both replicates (the entry it repeats) and seed")
    elif "seed" in entry:
        problem = _int(0, MAX_SEED)(entry["seed"])
        if problem:
            problems.append(f".seed: {problem}")
        if not isinstance(entry["replicates"], str):
            problems.append(f".replicates: must name another entry of generation.models, got {entry['replicates']!r}")
    return problems


def _sampling(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be a mapping, got {v!r}"
    unknown = [k for k in v if k not in SAMPLING_KEYS]
    if unknown:
        return f"unknown key {unknown[0]!r} (known: {', '.join(SAMPLING_KEYS)})"
    checks = {"maskgit_steps": _int(1, 1024), "smart_T": _int(2, 1024), "smart_alpha": _float(0.0, 1.0),
              "smart_beta": _float(0.0, 1.0), "temperature": _float(0.0, 100.0),
              "choice_temperature": _float(0.0, 100.0), "guidance_scale": _float(0.0, 100.0),
              "top_k": _int(1, 1 << 20)}
    for key, check in checks.items():
        if key not in v:
            return f"{key}: missing"
        problem = check(v[key])
        if problem:
            return f"{key}: {problem}"
    if v["smart_beta"] > v["smart_alpha"]:
        return f"smart_beta ({v['smart_beta']}) must not exceed smart_alpha ({v['smart_alpha']}) (M6-Fashion Sec. 3.2)"
    sweep = v.get("guidance_sweep")
    if not isinstance(sweep, list) or not sweep or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                         or not math.isfinite(x) or x < 0 for x in sweep):
        return f"guidance_sweep: must be a non-empty list of scales >= 0, got {sweep!r}"
    return None


EDITING_CHECKS = {"guidance": _float(0.0, 100.0), "mask_free_fraction": _float(0.0, 1.0), "mask_free_top_k": _int(1, 1 << 20)}


def _editing(v: Any) -> list[str] | str | None:
    """``generation.editing``: the settings of notebook 05's mask-free editing (Muse Sec. 3.3.2)."""
    if not isinstance(v, dict):
        return f"must be a mapping, got {v!r}"
    errors = [f"{k}: unknown parameter (known: {', '.join(EDITING_CHECKS)})" for k in v if k not in EDITING_CHECKS]
    for key, check in EDITING_CHECKS.items():
        problem = f"{key}: missing" if key not in v else check(v[key])
        if problem:
            errors.append(problem if key not in v else f"{key}: {problem}")
    return errors or None


def _steps_entry(name: str, entry: Any) -> list[str]:
    problem = _int(0, 10_000_000)(entry)
    return [f": {problem} (0 = not run in this profile)"] if problem else []


def _check_tokenizers(params: dict) -> list[str]:
    """Cross-key checks of the merged ``tokenizers`` section (run once its keys are valid)."""
    tok = params.get("tokenizers")
    if not isinstance(tok, dict):
        return []
    configs, finetunes, steps = tok["configs"], tok["finetunes"], tok["steps"]
    errors = [f"tokenizers.finetunes.{n}: name also used in tokenizers.configs" for n in finetunes if n in configs]
    # The token grid is image_size / f (f = 2 ** (len(ch_mult) - 1)); a size the data do not have, or
    # one f does not divide, gives a grid the tokenizer reports but does not produce.
    if tok["image_size"] != DATA_IMAGE_SIZE:
        errors.append(f"tokenizers.image_size: must equal the side of the rendered images "
                      f"({DATA_IMAGE_SIZE}), got {tok['image_size']}")
    f = 2 ** (len(tok["ch_mult"]) - 1)
    if tok["image_size"] % f:
        errors.append(f"tokenizers.image_size: must be divisible by the downsampling factor {f} "
                      f"(2 ** (len(ch_mult) - 1)), got {tok['image_size']}")
    names = [*configs, *finetunes]
    errors += [f"tokenizers.steps.{n}: missing (every config needs a step count in every profile; 0 = not run)"
               for n in names if n not in steps]
    errors += [f"tokenizers.steps.{n}: no such config in tokenizers.configs or tokenizers.finetunes" for n in steps
               if n not in names]
    for n, ft in finetunes.items():
        if ft["base"] not in configs:
            errors.append(f"tokenizers.finetunes.{n}.base: {ft['base']!r} is not in tokenizers.configs "
                          f"(known: {', '.join(configs)})")
        elif steps.get(n, 0) > 0 and steps.get(ft["base"], 0) == 0:
            errors.append(f"tokenizers.steps.{n}: fine-tunes {ft['base']!r}, which this profile does not train "
                          f"(tokenizers.steps.{ft['base']} = 0)")
    return errors


def _check_generation(params: dict) -> list[str]:
    """Cross-key checks of ``generation``: every model has steps, names a known tokenizer."""
    gen, tok = params.get("generation"), params.get("tokenizers")
    if not isinstance(gen, dict) or not isinstance(tok, dict):
        return []
    models, steps = gen["models"], gen["steps"]
    known_tok = [*tok["configs"], *tok["finetunes"]]
    errors = [f"generation.steps.{n}: missing (every model needs a step count in every profile; 0 = not run)"
              for n in models if n not in steps]
    errors += [f"generation.steps.{n}: no such model in generation.models" for n in steps if n not in models]
    for n, m in models.items():
        if m["tokenizer"] not in tok["configs"]:
            errors.append(f"generation.models.{n}.tokenizer: {m['tokenizer']!r} is not in tokenizers.configs "
                          f"(known: {', '.join(tok['configs'])})")
        elif steps.get(n, 0) > 0 and tok["steps"].get(m["tokenizer"], 0) == 0:
            errors.append(f"generation.steps.{n}: uses tokenizer {m['tokenizer']!r}, which this profile does not "
                          f"train (tokenizers.steps.{m['tokenizer']} = 0)")
        if m.get("decode_with") is not None and m["decode_with"] not in known_tok:
            errors.append(f"generation.models.{n}.decode_with: {m['decode_with']!r} is not a tokenizer "
                          f"(known: {', '.join(known_tok)})")
    if gen["dim"] % gen["heads"]:
        errors.append(f"generation.dim: {gen['dim']} must be divisible by generation.heads ({gen['heads']})")
    errors += _check_replicas(models, steps, int(params.get("seed", 0)))
    return errors


def _check_replicas(models: dict, steps: dict, seed: int) -> list[str]:
    """A seed replica repeats an entry exactly (only its seed differs), trains as long (or, in a
    profile that cannot afford it, not at all), and has a seed no other run of that configuration uses (the original runs with the
    top-level ``seed``)."""
    errors, used = [], {}
    for n, m in models.items():
        if "replicates" not in m:
            continue
        base = m["replicates"]
        if base not in models or "replicates" in models[base]:
            errors.append(f"generation.models.{n}.replicates: {base!r} is not an original entry of generation.models")
            continue
        differ = sorted(k for k in set(m) | set(models[base]) if k not in REPLICA_KEYS and m.get(k) != models[base].get(k))
        if differ:
            errors.append(f"generation.models.{n}: a seed replica of {base!r} must equal it except in seed; "
                          f"differs in {', '.join(differ)}")
        if steps.get(n) not in (0, steps.get(base)):
            errors.append(f"generation.steps.{n}: {steps.get(n)} steps, but the entry it replicates ({base}) has "
                          f"{steps.get(base)}: a replica trains as long as its original (or not at all: 0)")
        if m["seed"] == seed or m["seed"] in used.get(base, ()):
            errors.append(f"generation.models.{n}.seed: {m['seed']} is already used by another run of {base!r} "
                          f"(the original trains with the top-level seed {seed})")
        used.setdefault(base, set()).add(m["seed"])
    return errors


# ---------------------------------------------------------------------------------------------
# unifashion (UniFashion, lib/stages/unifashion.py) and super_res (Muse Sec. 2.4, lib/stages/super_res.py): their
# schemas live here with the others so that checking params.yaml imports no torch (issue 16); the
# stage modules read them through unifashion_settings / super_res_settings.
# ---------------------------------------------------------------------------------------------
def _choice(*options: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(map(str, options))}, got {v!r}"
    return check


def _floats(n: int, lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or len(v) != n:
            return f"must be a list of {n} numbers, got {v!r}"
        problems = [p for p in map(_float(lo, hi), v) if p]
        return f"every entry {problems[0]}" if problems else None
    return check


def _name(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"must be a non-empty name, got {v!r}"


#: UniFashion Table 7's instruction templates by name (the prompts themselves:
#: lib.retrieval.caption_decoder.INSTRUCTIONS; a test keeps the two in step)
INSTRUCTION_NAMES = ("fashion200k", "fashiongen", "fashioniq-cap")


def _instruction(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and v in INSTRUCTION_NAMES):
        return None
    return f"must be null or a UniFashion Table 7 prompt name ({', '.join(INSTRUCTION_NAMES)}), got {v!r}"


#: unifashion key -> checker (or a nested {key: checker} for mappings); shared keys, then per-profile keys.
UNIFASHION_SHARED_SCHEMA: dict[str, Any] = {
    "image_size": _int(16, 512),
    "out_index": _int(1, 6),
    "modification_max_length": _int(8, 128),
    "cmr_split": _choice("val", "test"),
    "composed_split": _choice("val", "test"),
    "qformer": {"num_queries": _int(1, 256), "dim": _int(8, 4096), "num_layers": _int(1, 48), "heads": _int(1, 64),
                "embed_dim": _int(8, 4096), "cross_every": _int(1, 48), "ffn_mult": _int(1, 16),
                "dropout": _float(0.0, 0.9)},
    "decoder": {"dim": _int(8, 4096), "num_layers": _int(1, 48), "heads": _int(1, 64), "num_prefix": _int(0, 64),
                "max_len": _int(1, 256)},
    "instruction": _instruction,
    "batch_size": _int(2, 65536),
    "lr": {"phase1": _float(1e-7, 1.0), "captioner": _float(1e-7, 1.0), "phase2": _float(1e-7, 1.0)},
    "warmup_fraction": _float(0.0, 0.9),
    "itg_weight": _float(0.0, 100.0),
    "loss_weights": _floats(3, 0.0, 100.0),
    "caption_weight": _float(0.0, 100.0),
    "generator": {"model": _name, "lr": _float(1e-7, 1.0), "finetune": _choice(True, False),
                  "cond_drop": _float(0.0, 1.0), "guidance_scale": _float(0.0, 100.0)},
    "generation_weight": _float(0.0, 100.0),
}
UNIFASHION_PROFILE_SCHEMA: dict[str, Any] = {
    "steps": {"phase1": _int(1, 10_000_000), "captioner": _int(1, 10_000_000), "phase2": _int(1, 10_000_000),
              "generator": _int(1, 10_000_000), "phase2_base": _int(0, 10_000_000)},
    "train_images": _int(2, 1_000_000),
    "train_triplets_per_category": _int(1, 1_000_000),
    "cmr_images": _int(2, 1_000_000),
    "random_negatives": _int(1, 999),
    "composed_queries": _int(1, 1_000_000, nullable=True),
    "caption_eval_n": _int(1, 1_000_000),
    "generation_eval_n": _int(1, 1_000_000),
}
UNIFASHION_SCHEMA = {**UNIFASHION_SHARED_SCHEMA, **UNIFASHION_PROFILE_SCHEMA}


def _check_nested(values: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(values, dict):
        return [f"{where}: must be a mapping, got {type(values).__name__} {values!r}"]
    errors = [f"{where}.{k}: unknown parameter (known: {', '.join(schema)})" for k in values if k not in schema]
    for key, check in schema.items():
        if key not in values:
            errors.append(f"{where}.{key}: missing")
        elif isinstance(check, dict):
            errors += _check_nested(values[key], check, f"{where}.{key}")
        else:
            problem = check(values[key])
            if problem:
                errors.append(f"{where}.{key}: {problem}")
    return errors


def unifashion_settings(params: Mapping[str, Any]) -> dict:
    """The validated ``unifashion`` section of a loaded profile: shared keys
    (:data:`UNIFASHION_SHARED_SCHEMA`) merged with ``profiles.<p>.unifashion``
    (:data:`UNIFASHION_PROFILE_SCHEMA`). Raises one :class:`AtelierInputError` naming every bad key."""
    where = f"params.yaml (profile {params.get('profile')!r})"
    if "unifashion" not in params:
        raise AtelierInputError(f"{where}: section 'unifashion' missing (UniFashion retrieval settings; see "
                                f"lib/stages/unifashion.py)")
    R = params["unifashion"]
    errors = _check_nested(R, UNIFASHION_SCHEMA, "unifashion")
    if not errors:
        q, d = R["qformer"], R["decoder"]
        if q["dim"] % q["heads"]:
            errors.append(f"unifashion.qformer.dim: {q['dim']} must be divisible by unifashion.qformer.heads ({q['heads']})")
        if d["dim"] % d["heads"]:
            errors.append(f"unifashion.decoder.dim: {d['dim']} must be divisible by unifashion.decoder.heads ({d['heads']})")
        if R["image_size"] % 16:
            errors.append(f"unifashion.image_size: {R['image_size']} must be a multiple of 16 (EfficientNet stride)")
    if errors:
        raise AtelierInputError(f"{where}: invalid parameters:\n  " + "\n  ".join(errors))
    return dict(R)


SUPER_RES_KEYS = ("base", "scale", "tokenizer_lr", "sampling_steps", "guidance_scale", "low_res_mode", "low_res_depth",
                  "compare_forms")
#: super_res.low_res_mode: Muse's separate low-res encoder + cross-attention, or joint self-attention
#: (lib/generation/super_res.py builds them)
SUPER_RES_LOW_RES_MODES = ("cross_attention", "joint")
SUPER_RES_PROFILE_KEYS = ("tokenizer_steps", "steps", "train_images", "eval_n")


def super_res_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``super_res`` section of a loaded profile, checked (errors name the key)."""
    S = params.get("super_res")
    if not isinstance(S, Mapping):
        raise AtelierInputError("params.yaml: section 'super_res' missing (Muse super-resolution stage)")
    known = sorted(set(SUPER_RES_KEYS) | set(SUPER_RES_PROFILE_KEYS))
    problems = [f"super_res.{k}: missing" for k in known if k not in S]
    problems += [f"super_res.{k}: unknown parameter (known: {', '.join(known)})" for k in S if k not in known]
    if problems:
        raise AtelierInputError("params.yaml: " + "; ".join(problems))
    models = params["generation"]["models"]
    if S["base"] not in models or models[S["base"]]["kind"] != "masked":
        raise AtelierInputError(f"params.yaml: super_res.base: {S['base']!r} is not a masked generator of "
                                f"generation.models (known: {', '.join(models)})")
    for key, lo in (("scale", 2), ("tokenizer_steps", 1), ("steps", 0), ("train_images", 1), ("eval_n", 1),
                    ("sampling_steps", 1)):
        v = S[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise AtelierInputError(f"params.yaml: super_res.{key}: an integer >= {lo}, got {v!r}")
    for key in ("tokenizer_lr", "guidance_scale"):
        if isinstance(S[key], bool) or not isinstance(S[key], (int, float)) or S[key] < 0:
            raise AtelierInputError(f"params.yaml: super_res.{key}: a non-negative number, got {S[key]!r}")
    if S["low_res_mode"] not in SUPER_RES_LOW_RES_MODES:
        raise AtelierInputError(f"params.yaml: super_res.low_res_mode: one of {', '.join(SUPER_RES_LOW_RES_MODES)}, "
                                f"got {S['low_res_mode']!r}")
    v = S["low_res_depth"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise AtelierInputError(f"params.yaml: super_res.low_res_depth: an integer >= 1, got {v!r}")
    if not isinstance(S["compare_forms"], bool):
        raise AtelierInputError(f"params.yaml: super_res.compare_forms: true or false, got {S['compare_forms']!r}")
    return dict(S)


def _check_unifashion(params: dict) -> list[str]:
    if "unifashion" not in params:
        return []
    try:
        unifashion_settings(params)
    except AtelierInputError as err:
        return [line.strip() for line in str(err).splitlines()[1:]] or [str(err)]
    return []


def _check_super_res(params: dict) -> list[str]:
    if "super_res" not in params:
        return []
    try:
        super_res_settings(params)
    except AtelierInputError as err:
        return [str(err)]
    return []


#: section -> key -> checker returning an error message or None.
SCHEMA: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "data": {
        "captions_per_image": _int(1, 10),
        "val_size": _int(1, 59000),
        "heldout_per_category": _int(0, 39),
        "heldout_test_fraction": _float(0.0, 1.0),
        "max_train": _int(1, 55000, nullable=True),
        "max_val": _int(1, 59000, nullable=True),
        "max_test": _int(1, 10000, nullable=True),
    },
    "judges": {
        "width": _int(4, 512),
        "batch_size": _int(2, 8192),
        "lr": _float(1e-6, 1.0),
        "embed_dim": _int(8, 2048),
        "classifier_steps": _int(1, 10_000_000),
        "contrastive_steps": _int(1, 10_000_000),
        "eval_n": _int(10, 10000, nullable=True),
        "fid_n": _int(10, 10000),
    },
    "tokenizers": {
        # shared architecture (lib.models.tokenizer config keys)
        "image_size": _int(8, 4096),
        "ch": _int(4, 1024),
        "ch_mult": _int_list(1, 16),
        "num_res_blocks": _int(0, 16),
        "z_dim": _int(1, 4096),
        "codebook": _mapping,
        # shared training
        "batch_size": _int(1, 65536),
        "lr": _float(1e-7, 1.0),
        "perceptual_weight": _float(0.0, 100.0),
        "gan_weight": _float(0.0, 100.0),
        "gan_start": _float(0.0, 1.0),
        "disc_ndf": _int(4, 1024),
        "channels_last": _bool,
        "grid_n": _int(1, 64),
        # named configurations
        "configs": _named(_tokenizer_entry),
        "finetunes": _named(_finetune_entry, allow_empty=True),
        # per profile
        "steps": _named(_steps_entry),
        "rfid_n": _int(10, 50000),
        "eval_n": _int(10, 10000, nullable=True),
    },
    "uncertainty": {
        "bootstrap_resamples": _int(2, 100000),
        "level": _float(0.5, 0.999),
        "seed": _int(0, MAX_SEED),
    },
    "generation": {
        "dim": _int(8, 8192),
        "depth": _int(1, 128),
        "heads": _int(1, 128),
        "mlp_ratio": _float(0.5, 16.0),
        "batch_size": _int(1, 65536),
        "lr": _float(1e-7, 1.0),
        "warmup_steps": _int(0, 10_000_000),
        "label_smoothing": _float(0.0, 0.99),
        "cond_drop": _float(0.0, 1.0),
        "sampling": _sampling,
        "editing": _editing,
        "models": _named(_generator_entry),
        # per profile
        "steps": _named(_steps_entry),
        "eval_n": _int(10, 50000),
        "sweep_n": _int(10, 50000),
        "edit_n": _int(1, 256),
        "edit_iterations": _int(1, 1000),
    },
}
#: checks across keys of one or more sections, run when every key passed its own check.
CROSS_CHECKS: tuple[Callable[[dict], list[str]], ...] = (_check_tokenizers, _check_generation, _check_unifashion,
                                                         _check_super_res)
TOP_LEVEL = {"profile", "seed", "profiles"}
#: sections whose per-profile override may set only these keys (dvc.yaml tracks exactly these per
#: profile; a profile overriding a shared key would change results without DVC noticing).
PROFILE_KEYS: dict[str, tuple[str, ...]] = {"tokenizers": ("steps", "rfid_n", "eval_n"),
                                            "generation": ("steps", "eval_n", "sweep_n", "edit_n", "edit_iterations"),
                                            "unifashion": ("steps", "train_images", "train_triplets_per_category",
                                                          "cmr_images", "random_negatives", "composed_queries",
                                                          "caption_eval_n", "generation_eval_n"),
                                            "super_res": ("tokenizer_steps", "steps", "train_images", "eval_n")}


def read(path: str | Path | None = None) -> dict:
    path = Path(path) if path else repo_root() / "params.yaml"
    if not path.is_file():
        raise AtelierInputError(f"{path}: parameters file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.constructor.ConstructorError as err:
        if err.problem and "written twice" in err.problem:
            raise AtelierInputError(f"{path}: {err.problem}") from None
        raise AtelierInputError(f"{path}: not valid YAML ({err})") from None
    except yaml.YAMLError as err:
        raise AtelierInputError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise AtelierInputError(f"{path}: expected a mapping at the top level")
    return raw


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(params: dict, where: str = "params.yaml") -> None:
    """Check known sections against :data:`SCHEMA`; raise one error naming every bad key."""
    errors = []
    seed = params.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        errors.append(f"seed: must be an integer in [0, {MAX_SEED}], got {seed!r}")
    # Sections validated elsewhere (e.g. ``unifashion`` by lib.stages.unifashion.settings) must still be mappings.
    for section, values in params.items():
        if section not in TOP_LEVEL and section not in SCHEMA and not isinstance(values, dict):
            errors.append(f"{section}: must be a mapping, got {type(values).__name__}")
    for section, checks in SCHEMA.items():
        values = params.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            errors.append(f"{section}: must be a mapping, got {type(values).__name__}")
            continue
        for key in values:
            if key not in checks:
                errors.append(f"{section}.{key}: unknown parameter (known: {', '.join(sorted(checks))})")
        for key, check in checks.items():
            if key not in values:
                errors.append(f"{section}.{key}: missing")
                continue
            problem = check(values[key])
            if isinstance(problem, list):  # a mapping checker: one message per entry, each "name..."
                errors += [f"{section}.{key}.{msg}" for msg in problem]
            elif problem:
                errors.append(f"{section}.{key}: {problem}")
    if not errors:
        for cross in CROSS_CHECKS:
            errors += cross(params)
    if errors:
        raise AtelierInputError(f"{where}: invalid parameters:\n  " + "\n  ".join(errors))


def load(profile: str | None = None, path: str | Path | None = None) -> dict:
    """Parameters of ``profile`` (default: the file's ``profile:``), merged and validated.

    The result has ``profile``, ``seed`` and one mapping per section.
    """
    raw = read(path)
    where = str(path or "params.yaml")
    profile = profile if profile is not None else raw.get("profile", "default")
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict):
        raise AtelierInputError(f"{where}: profiles: must be a mapping of profile name -> overrides, "
                                f"got {type(profiles).__name__}")
    if not isinstance(profile, str) or profile not in profiles:
        raise AtelierInputError(
            f"{where}: unknown profile {profile!r}; choose one of {sorted(profiles) or list(PROFILES)}"
        )
    if profiles[profile] is not None and not isinstance(profiles[profile], dict):
        raise AtelierInputError(f"{where}: profiles.{profile}: must be a mapping of section -> overrides, "
                                f"got {type(profiles[profile]).__name__}")
    shared = {k: v for k, v in raw.items() if k not in TOP_LEVEL}
    bad = [k for k, v in shared.items() if not isinstance(v, dict)]
    if bad:
        raise AtelierInputError(f"{where}: {bad[0]}: must be a mapping (a section of parameters), "
                                f"got {type(shared[bad[0]]).__name__}")
    for section, allowed in PROFILE_KEYS.items():
        override = (profiles[profile] or {}).get(section) or {}
        stray = [k for k in override if k not in allowed] if isinstance(override, dict) else []
        if stray:
            raise AtelierInputError(
                f"{where}: profiles.{profile}.{section}.{stray[0]}: a profile may set only {', '.join(allowed)} "
                f"in '{section}' (set shared values in the top-level '{section}' section)"
            )
        for key in allowed:
            if isinstance(raw.get(section), dict) and key in raw[section]:
                raise AtelierInputError(f"{where}: {section}.{key}: set it per profile (profiles.<name>.{section}.{key})")
    merged = _merge(shared, profiles[profile] or {})
    # validate() skips absent sections (it also checks partial dicts); a loaded profile needs them all.
    absent = [section for section in SCHEMA if section not in merged]
    if absent:
        raise AtelierInputError(f"{where} (profile {profile!r}): section(s) {', '.join(absent)} missing")
    merged["profile"] = profile
    merged["seed"] = raw.get("seed", 0)
    validate(merged, f"{where} (profile {profile!r})")
    return merged


def set_profile(profile: str, path: str | Path | None = None) -> Path:
    """Record ``profile`` as the active one in ``params.yaml`` (comments kept), after validating it."""
    path = Path(path) if path else repo_root() / "params.yaml"
    load(profile, path)  # unknown names and bad values fail here, before anything is written
    text = path.read_text(encoding="utf-8")
    new, n = re.subn(r"(?m)^profile:.*$", f"profile: {profile}", text, count=1)
    if n != 1:
        raise AtelierInputError(f"{path}: no top-level 'profile:' line to set")
    if new != text:
        atomic_write_text(path, new)
    return path


ENV_PARAMS = "ATELIER_PARAMS"


def load_params(profile: str, path: str | Path | None = None) -> dict:
    """``lib.config.load(profile, path)``; ``path`` defaults to ``$ATELIER_PARAMS`` when set (tests),
    else the repository's ``params.yaml``."""
    return load(profile, path or os.environ.get(ENV_PARAMS) or None)
