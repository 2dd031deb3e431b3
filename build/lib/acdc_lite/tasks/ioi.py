"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the store, John gave a drink to" -> " Mary".

Templates come in ABBA order (IO first) and BABA order (subject first). The corrupted prompt is
the "ABC" prompt: the same template and place and object, with the three name slots filled by
three other distinct names, so no name is repeated and the IO is not identifiable. Metric: logit
difference IO - S at the last position.

Works with BPE tokenizers in which the names, places and objects are single tokens after a space
(GPT-2's; the word lists were chosen for it) and with word-level vocabularies that contain them.
Every template is used; prompts of different lengths are padded on the model tokenizer's side and
each is read at its own last position. Anything else raises TaskError saying what is missing.
"""

from __future__ import annotations

import logging
import random
import re

from torch import nn

from acdc_lite.padding import pad_id_of, padding_side_of
from acdc_lite.task import Task, TaskError, Vocabulary, draw_rows, task_from_rows, text_vocabulary

log = logging.getLogger(__name__)

DESCRIPTION = "IOI: 'When Mary and John went to the store, John gave a drink to' -> Mary; ABC corruption; logit diff IO - S"

NAMES = ["Mary", "John", "Tom", "James", "Dan", "Sarah", "Paul", "Mark", "David", "Michael", "Anna", "Kate",
         "Lisa", "Emma", "Alice", "Bob", "Jack", "Sam", "Max", "Ben", "Peter", "Jane", "Susan", "Steve",
         "Mike", "Chris", "Ryan", "Adam", "Luke", "Rachel", "Laura", "Amy"]
PLACES = ["store", "park", "school", "office", "house", "station", "restaurant", "hospital", "garden",
          "market", "beach", "church", "library"]
OBJECTS = ["ring", "book", "drink", "bone", "ball", "computer", "snack", "letter", "gift", "key", "bag",
           "phone", "cup"]

# Word-level spelling: one token per space-separated word. {A} is the first name, {B} the second;
# the subject S is the name that is repeated, the indirect object IO the other one.
TEMPLATES = [
    "When {A} and {B} went to the {P} , {S} gave a {O} to",
    "After {A} and {B} went to the {P} , {S} gave a {O} to",
    "While {A} and {B} were at the {P} , {S} handed a {O} to",
    "When {A} and {B} arrived at the {P} , {S} gave a {O} to",
    "After {A} and {B} went to the {P} , {S} passed a {O} to",
    "Once {A} and {B} got to the {P} , {S} offered a {O} to",
]

MIN_NAMES, MIN_PLACES, MIN_OBJECTS = 8, 3, 3


def _text(template: str, word_level: bool, **slots: str) -> str:
    text = template.format(**slots)
    if word_level:
        return text
    return re.sub(r" ([,.])", r"\1", text)  # "store , John" -> "store, John" for BPE tokenizers


def _usable(vocab: Vocabulary, words: list[str], minimum: int, what: str) -> dict[str, int]:
    ids = vocab.word_ids(words)
    if len(ids) < minimum:
        raise TaskError(f"ioi needs at least {minimum} {what} that are single tokens in this model's vocabulary, "
                        f"found {len(ids)} ({', '.join(ids) or 'none'}); IOI supports GPT-2-style BPE tokenizers "
                        "and word-level vocabularies that contain its word lists (tasks/ioi.py)")
    return ids


def build(model: nn.Module, n_examples: int = 64, seed: int = 0) -> Task:
    """The IOI task for `model`'s tokenizer or word vocabulary (see the module docstring)."""
    vocab = text_vocabulary(model, "ioi", n_examples)
    word_level = vocab.words is not None
    names = _usable(vocab, NAMES, MIN_NAMES, "names")
    places = list(_usable(vocab, PLACES, MIN_PLACES, "places"))
    objects = list(_usable(vocab, OBJECTS, MIN_OBJECTS, "objects"))
    bos = vocab.bos

    def encode(text: str) -> list[int]:
        try:
            ids = vocab.encode(text)
        except TaskError:
            return []
        return ([bos] if bos is not None else []) + ids

    a, b, p, o = list(names)[0], list(names)[1], places[0], objects[0]
    templates = [t for t in TEMPLATES if encode(_text(t, word_level, A=a, B=b, S=b, P=p, O=o))]
    if not templates:
        raise TaskError("ioi: none of the templates can be written in this model's vocabulary")

    rng = random.Random(seed)

    def draw():
        template = templates[rng.randrange(len(templates))]
        io, s, x, y, z = rng.sample(list(names), 5)
        order = rng.choice(("ABBA", "BABA"))
        first, second = (io, s) if order == "ABBA" else (s, io)
        place, obj = rng.choice(places), rng.choice(objects)
        clean = encode(_text(template, word_level, A=first, B=second, S=s, P=place, O=obj))
        corrupt = encode(_text(template, word_level, A=x, B=y, S=z, P=place, O=obj))
        if not clean or len(clean) != len(corrupt):
            return None  # a name merged with its neighbour under this tokenizer
        return clean, corrupt, [names[io]], [names[s]]

    rows = draw_rows("ioi", n_examples, draw)
    return task_from_rows("ioi", rows, padding_side=padding_side_of(model), pad_id=pad_id_of(model),
                          default_metric="logit_diff",
                          info={"seed": seed, "templates": templates, "orders": ["ABBA", "BABA"],
                                "corruption": "ABC (three other names)", "bos": bos is not None})
