"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> a year after 32.

The start year 17YY has YY in 02..98. The corrupted prompt is the "01" prompt: the same sentence
with YY replaced by 01, so every two-digit year looks plausible. Metric: probability difference
at the last position, the total probability of the years YY+1..99 minus that of 00..YY (answers
are the later years, foils the earlier ones, each an answer set; see `Task`).

Works with GPT-2-style BPE tokenizers, in which " 17" and the two-digit strings "00".."99" are
single tokens and " 17YY" splits into " 17" + "YY" (years that split otherwise are not used, as in
the paper), and with word-level vocabularies that contain the words of the sentence, "17", all
of "00".."99" and some of the nouns (there the prompt is written "... the year 17 32 to ...").
Anything else raises TaskError naming the missing tokens.
"""

from __future__ import annotations

import logging
import random

import torch
from torch import nn

from acdc_lite.task import Task, TaskError, Vocabulary, draw_rows, text_vocabulary

log = logging.getLogger(__name__)

DESCRIPTION = "Greater-than: 'The war lasted from the year 1732 to the year 17' -> YY+1..99; '01' corruption; prob diff"

NOUNS = ["war", "reign", "siege", "voyage", "journey", "trial", "treaty", "strike", "plague", "dynasty", "marriage",
         "expedition", "campaign", "rebellion", "famine", "drought", "conflict", "alliance", "project", "study",
         "tour", "crisis", "occupation", "revolt", "truce", "blockade", "feud", "boom", "partnership", "exile"]
CENTURY = "17"
YEARS = [f"{y:02d}" for y in range(100)]
FIRST_YY, LAST_YY = 2, 98  # clean start years: leave at least one year on each side, and differ from "01"
CORRUPT_YY = 1
MIN_NOUNS = 3


def _text(noun: str, yy: str, word_level: bool) -> str:
    if word_level:
        return f"The {noun} lasted from the year {CENTURY} {yy} to the year {CENTURY}"
    return f"The {noun} lasted from the year {CENTURY}{yy} to the year {CENTURY}"


def _missing_words(vocab: Vocabulary, words) -> list[str]:
    missing = []
    for w in words:
        try:
            vocab.encode(w)
        except TaskError:
            missing.append(w)
    return missing


def _nouns(vocab: Vocabulary) -> list[str]:
    usable = list(vocab.word_ids(NOUNS))
    if len(usable) < MIN_NOUNS:
        raise TaskError(f"greater-than needs at least {MIN_NOUNS} nouns that are single tokens in this model's vocabulary, "
                        f"found {len(usable)} ({', '.join(usable) or 'none'}); add some of {', '.join(NOUNS[:8])}, ... "
                        "(tasks/greater_than.py)")
    return usable


def _year_ids(vocab: Vocabulary) -> list[int]:
    """Token id of each two-digit year "00".."99"; TaskError naming those that are not single tokens."""
    ids, missing = [], []
    for yy in YEARS:
        try:
            tok = vocab.encode(yy)
        except TaskError:
            tok = []
        if len(tok) != 1:
            missing.append(yy)
        ids.append(tok[0] if len(tok) == 1 else -1)
    if missing:
        shown = ", ".join(missing[:12]) + (f", ... ({len(missing)} in all)" if len(missing) > 12 else "")
        raise TaskError(f"greater-than needs every two-digit year 00..99 as a single token; not single tokens in this "
                        f"vocabulary: {shown}")
    return ids


def build(model: nn.Module, n_examples: int = 64, seed: int = 0) -> Task:
    """The greater-than task for `model`'s tokenizer or word vocabulary (see the module docstring)."""
    vocab = text_vocabulary(model, "greater-than", n_examples)
    word_level = vocab.words is not None
    if word_level:
        missing = _missing_words(vocab, ["The", "lasted", "from", "the", "year", "to", CENTURY, *YEARS])
        if missing:
            raise TaskError(f"greater-than: words missing from this model's vocabulary: {', '.join(missing[:12])}"
                            + (f", ... ({len(missing)} in all)" if len(missing) > 12 else ""))
    nouns = _nouns(vocab)
    year_ids = _year_ids(vocab)
    bos = vocab.bos

    def encode(noun: str, yy: int) -> list[int]:
        return ([bos] if bos is not None else []) + vocab.encode(_text(noun, YEARS[yy], word_level))

    # where the year token sits, from a year whose split is known: the "01" of the corruption
    probe = encode(nouns[0], CORRUPT_YY)
    at = [i for i, t in enumerate(probe) if t == year_ids[CORRUPT_YY]]
    if len(at) != 1:
        raise TaskError(f"greater-than: '{CENTURY}{YEARS[CORRUPT_YY]}' does not split into '{CENTURY}' + "
                        f"'{YEARS[CORRUPT_YY]}' under this tokenizer, so the '01' corruption cannot be written")
    year_pos, seq_len = at[0], len(probe)

    def well_formed(ids: list[int], yy: int) -> bool:
        return len(ids) == seq_len and ids[year_pos] == year_ids[yy]

    usable_yy = [yy for yy in range(FIRST_YY, LAST_YY + 1) if well_formed(encode(nouns[0], yy), yy)]
    if not usable_yy:
        raise TaskError(f"greater-than: no year 17{YEARS[FIRST_YY]}..17{YEARS[LAST_YY]} splits into "
                        f"'{CENTURY}' + two digits under this tokenizer")
    if len(usable_yy) < LAST_YY - FIRST_YY + 1:
        log.info("greater-than: %d start years split differently and are not used: %s",
                 LAST_YY - FIRST_YY + 1 - len(usable_yy),
                 ", ".join(YEARS[y] for y in range(FIRST_YY, LAST_YY + 1) if y not in usable_yy))

    rng = random.Random(seed)

    def draw():
        noun, yy = rng.choice(nouns), rng.choice(usable_yy)
        clean, corrupt = encode(noun, yy), encode(noun, CORRUPT_YY)
        if not (well_formed(clean, yy) and well_formed(corrupt, CORRUPT_YY)):
            return None  # the noun merged with a neighbour under this tokenizer
        return clean, corrupt, yy

    rows = draw_rows("greater-than", n_examples, draw)
    answers = torch.full((n_examples, len(YEARS)), -1, dtype=torch.long)
    foils = torch.full((n_examples, len(YEARS)), -1, dtype=torch.long)
    for i, (_, _, yy) in enumerate(rows):
        later, earlier = year_ids[yy + 1:], year_ids[:yy + 1]
        answers[i, :len(later)] = torch.tensor(later)
        foils[i, :len(earlier)] = torch.tensor(earlier)
    return Task(
        name="greater-than",
        clean=torch.tensor([r[0] for r in rows]),
        corrupt=torch.tensor([r[1] for r in rows]),
        answers=answers,
        foils=foils,
        default_metric="prob_diff",
        info={"seed": seed, "century": CENTURY, "start_years": [YEARS[r[2]] for r in rows], "year_position": year_pos,
              "corruption": f"YY replaced by {YEARS[CORRUPT_YY]}", "bos": bos is not None,
              "metric": "P(years > YY) - P(years <= YY) at the last position"},
    )
