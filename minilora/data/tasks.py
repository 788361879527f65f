"""Downstream tasks the project makes itself: E2E-style data-to-text, and sorting/reversing lists.

Every task is a set of ``Example(prompt, references)``: the model reads the
prompt (input + "=") and should write one of the references, then "\\n".

    splits = e2e_task(seed=0)
    splits.train[0].prompt       # 'Cotto|food[Thai]='
    splits.train[0].references   # ('Cotto is a Thai place.', 'Cotto serves Thai food.', 'For Thai food, try Cotto.')

Splits are drawn without replacement from the set of distinct inputs, so no
input appears in two splits, and the same seed gives the same splits.
Examples are kept to ``max_len`` characters (prompt + reference + "\\n"), 65 by
default: one more than the classroom model's block size of 64, since a
sequence of L tokens gives L - 1 next-token predictions.
"""
import itertools
from dataclasses import dataclass

import numpy as np

SEPARATOR = "="  # ends every prompt: "input=" then the model writes the output


@dataclass(frozen=True)
class Example:
    """prompt: the input plus SEPARATOR; references: the acceptable outputs (at least one)."""

    prompt: str
    references: tuple


@dataclass(frozen=True)
class Splits:
    train: list
    validation: list
    test: list


def _split(examples, sizes, seed, task):
    """Shuffle distinct examples with ``seed`` and cut them into train/validation/test of ``sizes``."""
    needed = sum(sizes)
    if needed > len(examples):
        raise ValueError(
            f"{task}: asked for {sizes[0]} + {sizes[1]} + {sizes[2]} = {needed} examples, but only "
            f"{len(examples)} distinct inputs exist under these settings. Fix: ask for fewer, or raise max_len."
        )
    order = np.random.default_rng(seed).permutation(len(examples))
    chosen = [examples[i] for i in order[:needed]]
    a, b = sizes[0], sizes[0] + sizes[1]
    return Splits(train=chosen[:a], validation=chosen[a:b], test=chosen[b:])


# ---- E2E NLG style: a meaning representation becomes a sentence ------------------------------
# Short names and values keep an input plus a reference within the classroom model's 64 characters.
RESTAURANTS = ["Aromi", "Cotto", "Zizzi", "Strada", "Cocum", "Clowns", "Browns", "Nandos", "Mill", "Vine",
               "Eagle", "Plough", "Punter", "Olive", "Twenty", "Bakers", "Fitz", "Luna", "Rosa", "Kiku", "Mango",
               "Basil", "Thyme", "Sage", "Ember", "Otto", "Bruno", "Cedar", "Maple", "Willow", "Lotus", "Tulip",
               "Nero", "Gusto", "Pinto", "Fern"]
FOODS = ["Thai", "French", "Indian", "Chinese", "Italian", "English", "Japanese"]
AREAS = {"river": ("by the river", "By the river"), "centre": ("in the centre", "In the centre")}
PRICES = {"cheap": ("cheap", "cheap"), "mid": ("mid-priced", "moderately priced"), "high": ("pricey", "expensive")}
FAMILY = {"yes": ("family-friendly", " for families"), "no": ("adults-only", " for adults")}


def _realisations(name, food, area, price, family):
    """The reference sentences for one meaning representation (None marks an absent attribute).

    Every sentence mentions every present attribute, so each one is a correct output.
    """
    where = f" {AREAS[area][0]}" if area else ""
    adjectives = " ".join(w for w in (price and PRICES[price][0], family and FAMILY[family][0], food) if w)
    described = f"{'an' if adjectives[:1] in 'AEIOUaeiou' else 'a'} {adjectives} place" if adjectives else "a place"
    sentences = [f"{name} is {described}{where}."]
    if food:
        price_words = f"{PRICES[price][1]} " if price else ""
        who = FAMILY[family][1] if family else ""
        sentences.append(f"{name} serves {price_words}{food} food{who}{where}.")
        sentences.append(f"For {price_words}{food} food{who}{where}, try {name}.")
    if area:
        sentences.append(f"{AREAS[area][1]}, {name} is {described}.")
    if not food and (price or family):
        traits = " and ".join(w for w in (price and PRICES[price][1], family and FAMILY[family][0]) if w)
        sentences.append(f"{name}{where} is {traits}.")
    return tuple(dict.fromkeys(sentences))  # distinct, in a fixed order


def meaning_representation(name, food=None, area=None, price=None, family=None):
    """'Aromi|food[Thai]|area[river]': the name, then the attributes that are present, in a fixed order.

    E2E writes the name as ``name[Aromi]`` too; leaving that key out saves six
    characters, which lets twice as many inputs fit in 64.
    """
    fields = [("food", food), ("area", area), ("price", price), ("family", family)]
    return "|".join([name] + [f"{key}[{value}]" for key, value in fields if value])


def e2e_task(seed=0, n_train=806, n_validation=200, n_test=300, max_len=65):
    """Data-to-text in the style of the E2E NLG challenge, one to four references per input.

    Every restaurant name meets every combination of the optional attributes
    food, area, price and family (at least one present); references longer
    than ``max_len`` are dropped, and so are inputs left with none. With the
    default 65 characters, 1,306 inputs of one or two attributes remain, with
    one to three references each, and the defaults use them all: 806 to train,
    200 to choose steps and learning rates, 300 to report once. A model with
    block size 128 (max_len=129) gets 10,332 inputs, with up to four attributes.
    """
    examples = []
    for name, food, area, price, family in itertools.product(
        RESTAURANTS, [None, *FOODS], [None, *AREAS], [None, *PRICES], [None, *FAMILY]
    ):
        if not (food or area or price or family):
            continue
        prompt = meaning_representation(name, food, area, price, family) + SEPARATOR
        refs = tuple(r for r in _realisations(name, food, area, price, family) if len(prompt) + len(r) + 1 <= max_len)
        if refs:
            examples.append(Example(prompt, refs))
    return _split(examples, (n_train, n_validation, n_test), seed, "e2e_task")


def e2e_constant_output(example):
    """The baseline that ignores every attribute: "<Name> is a place." for the name in the prompt.

    It shares the name and most words with one reference of every input, so it scores well
    above zero in BLEU: the floor a model must beat before it has learned anything of the task.
    """
    return f"{example.prompt.split('|')[0]} is a place."


# ---- lists: sort or reverse a few digits ------------------------------------------------------
LIST_OPERATIONS = {"sort": sorted, "reverse": lambda items: items[::-1]}


def list_task(operation="sort", seed=0, n_train=2000, n_validation=200, n_test=200, min_items=2, max_items=8):
    """'sort 3 1 2=' -> '1 2 3' (or 'reverse 3 1 2=' -> '2 1 3'): lists of digits, one reference each."""
    if operation not in LIST_OPERATIONS:
        raise ValueError(f"list_task: operation must be one of {sorted(LIST_OPERATIONS)}, got {operation!r}")
    total = n_train + n_validation + n_test
    available = sum(10 ** k for k in range(min_items, max_items + 1))
    if total > available // 2:  # leave room, so that drawing distinct inputs stays quick
        raise ValueError(f"list_task: {total} examples asked, but lists of {min_items}..{max_items} digits allow "
                         f"about {available // 2}. Fix: raise max_items or ask for fewer.")
    rng = np.random.default_rng([seed, 1])  # the draw stream differs from _split's, which uses seed alone
    seen = {}
    while len(seen) < total:
        items = [str(d) for d in rng.integers(0, 10, size=rng.integers(min_items, max_items + 1))]
        prompt = f"{operation} {' '.join(items)}{SEPARATOR}"
        seen.setdefault(prompt, Example(prompt, (" ".join(LIST_OPERATIONS[operation](items)),)))
    return _split(list(seen.values()), (n_train, n_validation, n_test), seed, "list_task")
