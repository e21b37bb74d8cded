"""Caption and relative-caption templates.

Captions vary word order, synonyms and phrasing ("a red striped dress", "striped dress in red",
"a dress in red with stripes") so that text conditioning has to read the words rather than map a
fixed string to a class id. Relative captions follow Fashion-IQ's style: short, imperative-free
phrases describing how the target differs from the reference ("is blue instead of red", "has dots").
"""

from __future__ import annotations

import re

import numpy as np

from lib.data.attributes import CATEGORIES, COLOUR_NAMES, PATTERNS
from lib.io import AtelierInputError

# Templates use {c} colour, {a} pattern adjective, {n} pattern noun phrase, {g} garment word.
_PATTERNED = (
    "a {c} {a} {g}",
    "{a} {g} in {c}",
    "a {g} in {c} with {n}",
    "{c} {g} with {n}",
    "this {g} is {c} and {a}",
    "a {a} {c} {g}",
    "{g}, {c}, {a}",
)
_PLAIN = (
    "a {c} {g}",
    "a plain {c} {g}",
    "{g} in solid {c}",
    "a {a} {c} {g}",
    "this {g} is {c}",
    "{c} {g} with {n}",
    "{g}, {c}, {a}",
)


def _fix_articles(text: str) -> str:
    """'a orange dress' -> 'an orange dress' (templates put 'a' before any colour or garment)."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", lambda m: m.group(1) + "n ", text)


def caption(rng: np.random.Generator, category: int, colour: int, pattern: int) -> str:
    """One caption for the attributes, drawn with ``rng`` (template and synonyms)."""
    name, adjectives, nouns = PATTERNS[pattern]
    templates = _PLAIN if name == "plain" else _PATTERNED
    garment_words = CATEGORIES[category][1]
    return _fix_articles(templates[rng.integers(len(templates))].format(
        c=COLOUR_NAMES[colour],
        a=adjectives[rng.integers(len(adjectives))],
        n=nouns[rng.integers(len(nouns))],
        g=garment_words[rng.integers(len(garment_words))],
    ))


def captions(rng: np.random.Generator, category: int, colour: int, pattern: int, k: int) -> list[str]:
    """``k`` captions, distinct where the template space allows (a few redraws, then accept)."""
    out: list[str] = []
    for _ in range(8 * k):
        text = caption(rng, category, colour, pattern)
        if text not in out:
            out.append(text)
        if len(out) == k:
            break
    while len(out) < k:
        out.append(caption(rng, category, colour, pattern))
    return out


def _colour_change(rng, old: int, new: int) -> str:
    forms = ("is {new} instead of {old}", "is {new}", "is in {new} rather than {old}", "is {new} not {old}",
             "has a {new} colour")
    return forms[rng.integers(len(forms))].format(new=COLOUR_NAMES[new], old=COLOUR_NAMES[old])


def _pattern_change(rng, old: int, new: int) -> str:
    new_name, new_adj, new_noun = PATTERNS[new]
    old_adj = PATTERNS[old][1][0]
    if new_name == "plain":
        forms = ("is plain", "has no pattern", "is solid instead of {old}", "is plain rather than {old}")
    else:
        forms = ("has {noun}", "is {adj}", "is {adj} instead of {old}", "has {noun} rather than being {old}")
    return forms[rng.integers(len(forms))].format(
        noun=new_noun[rng.integers(len(new_noun))], adj=new_adj[rng.integers(len(new_adj))], old=old_adj
    )


def relative_captions(rng: np.random.Generator, ref: tuple[int, int], tgt: tuple[int, int]) -> list[str]:
    """Two relative captions (Fashion-IQ gives two per pair) for a (colour, pattern) change.

    Like Fashion-IQ's annotators, the two captions are phrased independently; each mentions every
    attribute that changed, in random order, joined with "and".
    """
    (c0, p0), (c1, p1) = ref, tgt
    if (c0, p0) == (c1, p1):
        raise AtelierInputError("reference and target attributes are identical: nothing to describe")
    out = []
    for _ in range(2):
        parts = []
        if c0 != c1:
            parts.append(_colour_change(rng, c0, c1))
        if p0 != p1:
            parts.append(_pattern_change(rng, p0, p1))
        rng.shuffle(parts)
        out.append(_fix_articles(" and ".join(parts)))
    return out
