"""The attribute vocabulary of the caption dataset: category, colour, pattern.

Categories are Fashion-MNIST's ten classes (real shapes and textures); colour and pattern are
painted on by :mod:`lib.data.render`. Three categories are exactly Fashion-IQ's: Dress -> ``dress``,
Shirt -> ``shirt``, T-shirt/top -> ``toptee``.
"""

from __future__ import annotations

#: Category name per Fashion-MNIST label, with caption synonyms (first one is canonical).
CATEGORIES = (
    ("t-shirt", ("t-shirt", "tee", "top")),
    ("trousers", ("trousers", "pants", "slacks")),
    ("pullover", ("pullover", "sweater", "jumper")),
    ("dress", ("dress", "frock", "gown")),
    ("coat", ("coat", "jacket", "overcoat")),
    ("sandal", ("sandal", "summer sandal", "strappy sandal")),
    ("shirt", ("shirt", "button-up shirt", "blouse")),
    ("sneaker", ("sneaker", "trainer", "running shoe")),
    ("bag", ("bag", "handbag", "purse")),
    ("ankle boot", ("ankle boot", "boot", "bootie")),
)

#: Named colours and their sRGB values (0-255), chosen to be distinct at 32x32.
COLOURS = (
    ("red", (205, 35, 35)),
    ("orange", (240, 135, 25)),
    ("yellow", (235, 205, 40)),
    ("green", (40, 150, 65)),
    ("blue", (35, 85, 210)),
    ("purple", (125, 50, 170)),
    ("pink", (240, 120, 180)),
    ("brown", (120, 75, 35)),
    ("grey", (128, 128, 128)),
    ("black", (25, 25, 25)),
)

#: Patterns: (name, adjective synonyms, "with ..." noun phrases).
PATTERNS = (
    ("plain", ("plain", "solid", "solid-colour"), ("no pattern", "a solid colour")),
    ("striped", ("striped", "stripy", "pinstriped"), ("stripes", "horizontal stripes")),
    ("dotted", ("dotted", "polka-dot", "spotted"), ("dots", "polka dots")),
    ("checked", ("checked", "checkered", "plaid"), ("checks", "a check pattern")),
)

CATEGORY_NAMES = tuple(name for name, _ in CATEGORIES)
COLOUR_NAMES = tuple(name for name, _ in COLOURS)
PATTERN_NAMES = tuple(name for name, _, _ in PATTERNS)

#: Fashion-IQ category -> Fashion-MNIST label.
FASHIONIQ_CATEGORIES = {"dress": 3, "shirt": 6, "toptee": 0}


def describe(category: int, colour: int, pattern: int) -> str:
    """Canonical short description, e.g. ``'red striped dress'``."""
    return f"{COLOUR_NAMES[colour]} {PATTERN_NAMES[pattern]} {CATEGORY_NAMES[category]}"
