"""A pretraining corpus of simple English-like sentences, generated from a small grammar (no downloads).

    text = pretraining_corpus(n_sentences=20_000, seed=0)   # one sentence per line

The grammar mixes everyday scenes with restaurant descriptions, so a model
pretrained on it already knows the words of the data-to-text task
(``e2e_task``) and only has to learn the mapping when fine-tuned.
"""
import numpy as np

NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Lena", "Max", "Nora", "Omar", "Paul", "Rosa", "Sam", "Tom"]
ANIMALS = ["cat", "dog", "bird", "fox", "horse", "rabbit", "duck", "mouse"]
THINGS = ["ball", "book", "box", "cup", "hat", "kite", "lamp", "letter", "map", "bike", "boat", "key"]
PLACES = ["park", "river", "garden", "market", "station", "school", "library", "beach", "forest", "city centre"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "small", "big", "old", "new"]
MOODS = ["happy", "tired", "hungry", "quiet", "busy", "late", "early"]
VERBS = ["found", "lost", "saw", "took", "liked", "bought", "carried", "painted"]
MOVES = ["walked", "ran", "went", "drove", "cycled"]
FOODS = ["Thai", "French", "Indian", "Chinese", "Italian", "English", "Japanese"]
EATERIES = ["restaurant", "cafe", "pub", "place"]
PRICES = ["cheap", "expensive", "moderately priced"]
AREAS = ["by the river", "in the centre", "near the station", "in the city centre"]
TIMES = ["In the morning", "After lunch", "In the evening", "On Sunday", "Yesterday", "Today"]


def _plural(noun):
    return {"mouse": "mice"}.get(noun, noun + ("es" if noun.endswith(("x", "s")) else "s"))


def _sentence(rng):
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731 (one draw from the shared generator)
    kind = rng.integers(8)
    if kind == 0:
        return f"The {pick(COLOURS)} {pick(ANIMALS)} {pick(VERBS)} the {pick(COLOURS)} {pick(THINGS)}."
    if kind == 1:
        return f"{pick(NAMES)} {pick(MOVES)} to the {pick(PLACES)} with {pick(NAMES)}."
    if kind == 2:
        return f"{pick(TIMES)}, {pick(NAMES)} was {pick(MOODS)}."
    if kind == 3:
        return f"{pick(NAMES)} {pick(VERBS)} a {pick(COLOURS)} {pick(THINGS)} at the {pick(PLACES)}."
    if kind == 4:
        return f"The {pick(EATERIES)} {pick(AREAS)} serves {pick(PRICES)} {pick(FOODS)} food."
    if kind == 5:
        return f"{pick(NAMES)} likes {pick(FOODS)} food, so we ate at a {pick(FOODS)} {pick(EATERIES)}."
    if kind == 6:
        family = pick(["is family-friendly", "is not family-friendly", "welcomes children", "is for adults"])
        return f"The {pick(PRICES)} {pick(EATERIES)} {pick(AREAS)} {family}."
    count = rng.integers(2, 6)
    return f"{pick(NAMES)} has {count} {_plural(pick(ANIMALS))} and {count + 1} {_plural(pick(THINGS))}."


def pretraining_corpus(n_sentences=20_000, seed=0):
    """``n_sentences`` sentences, one per line, the same for the same seed. Every character is in PRINTABLE."""
    rng = np.random.default_rng(seed)
    return "\n".join(_sentence(rng) for _ in range(n_sentences)) + "\n"
