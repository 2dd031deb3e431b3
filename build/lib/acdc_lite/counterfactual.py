"""Counterfactual pairs: clean and corrupted prompts that differ at exactly one token position.

A template is a function `template(value, rng) -> (prompt, answer)`: `value` fills the slot that is
varied, `rng` (a `random.Random`) draws anything else the template wants to vary (names, places...).
The clean and the corrupted prompt of a pair get two different values and identically seeded rngs,
so they share every other choice. A prompt is text (tokenized with the model's tokenizer or word
vocabulary, BOS prepended once if the vocabulary has one and `add_bos`) or a list of token ids (used
as is); an answer is text that is one token, or a token id.

Kept: pairs whose two prompts have the same token length (the length of the first such pair), differ
at `position` (an index into the token ids, BOS included; negative counts from the end) and nowhere
else, have different answers, and whose clean prompt the model gets right (the answer is its top
prediction at the last position). The corrupted prompt's answer is the foil; the metric is logit
difference answer - foil.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from acdc_lite.task import Task, TaskError, Vocabulary

log = logging.getLogger(__name__)

Template = Callable[[object, random.Random], tuple[str | Sequence[int], str | int]]


@dataclass(frozen=True)
class Pair:
    """One candidate: clean and corrupt token ids [P], their answers (the corrupt one is the foil), the two values."""

    clean: tuple[int, ...]
    corrupt: tuple[int, ...]
    answer: int
    foil: int
    clean_value: object
    corrupt_value: object


class _Encoder:
    """Prompts and answers to token ids; asks for the model's vocabulary only when text comes."""

    def __init__(self, model: nn.Module | None, add_bos: bool):
        self.model, self.add_bos, self._vocab = model, add_bos, None

    @property
    def vocab(self) -> Vocabulary:
        if self._vocab is None:
            if self.model is None:
                raise TaskError("text prompts need a model (for its tokenizer); or let the template return token ids")
            self._vocab = Vocabulary.of(self.model)
        return self._vocab

    def prompt(self, prompt) -> tuple[int, ...]:
        if isinstance(prompt, str):
            bos = self.vocab.bos if self.add_bos else None
            return tuple(([bos] if bos is not None else []) + self.vocab.encode(prompt))
        ids = tuple(int(t) for t in prompt)
        if not ids or min(ids) < 0:
            raise TaskError(f"a template returned the prompt {list(ids)}; token id prompts need at least one id, none negative")
        return ids

    def answer(self, answer) -> int:
        if isinstance(answer, str):
            return self.vocab.single(answer)
        if int(answer) < 0:
            raise TaskError(f"a template returned the answer id {answer}; token ids are not negative")
        return int(answer)


def candidate_pairs(template: Template, values: Sequence, position: int, seed: int = 0, model: nn.Module | None = None,
                    add_bos: bool = True, limit: int | None = None, stats: Counter | None = None) -> Iterator[Pair]:
    """The well-formed pairs (see the module docstring) among `limit` candidates (None: endless), before any model check.

    `stats` (if given) counts the candidates drawn and why the others were dropped.
    """
    values = list(dict.fromkeys(values))
    if len(values) < 2:
        raise TaskError(f"counterfactual pairs need at least two different values for the varied slot, got {values}")
    encode = _Encoder(model, add_bos)
    stats = Counter() if stats is None else stats
    rng = random.Random(seed)
    seq_len = None
    while limit is None or stats["drawn"] < limit:
        clean_value, corrupt_value = rng.sample(values, 2)
        sub_seed = rng.getrandbits(32)
        stats["drawn"] += 1
        clean_prompt, clean_answer = template(clean_value, random.Random(sub_seed))
        corrupt_prompt, corrupt_answer = template(corrupt_value, random.Random(sub_seed))
        clean, corrupt = encode.prompt(clean_prompt), encode.prompt(corrupt_prompt)
        if len(clean) != len(corrupt) or (seq_len is not None and len(clean) != seq_len):
            stats["different length"] += 1
            continue
        if not -len(clean) <= position < len(clean):
            stats["position outside the prompt"] += 1
            continue
        differ = [i for i in range(len(clean)) if clean[i] != corrupt[i]]
        if differ != [position % len(clean)]:
            stats["not differing at exactly the position"] += 1
            continue
        answer, foil = encode.answer(clean_answer), encode.answer(corrupt_answer)
        if answer == foil:
            stats["same answer"] += 1
            continue
        seq_len = len(clean)
        yield Pair(clean, corrupt, answer, foil, clean_value, corrupt_value)


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def right_on_clean(model: nn.Module, pairs: Sequence[Pair]) -> list[bool]:
    """For each pair, whether the answer is the model's top prediction at the clean prompt's last position."""
    clean = torch.tensor([p.clean for p in pairs], device=_device(model))
    answers = torch.tensor([p.answer for p in pairs], device=clean.device)
    return (model(clean)[:, -1].argmax(-1) == answers).tolist()


def counterfactual_task(model: nn.Module, template: Template, values: Sequence, position: int, n_examples: int = 64,
                        seed: int = 0, *, name: str = "counterfactual", add_bos: bool = True, max_candidates: int | None = None,
                        batch_size: int = 64) -> Task:
    """`n_examples` pairs that differ only at `position` and that `model` gets right on the clean side.

    Candidates are drawn in order (see `candidate_pairs`) and checked in batches; the first
    `n_examples` the model gets right are kept. TaskError, with counts of what was dropped and why,
    when fewer than `n_examples` are found among `max_candidates` (default 20 * n_examples + 100).
    """
    if n_examples < 1:
        raise TaskError(f"n_examples must be at least 1, got {n_examples}")
    limit = max_candidates or 20 * n_examples + 100
    stats: Counter = Counter()
    kept: list[Pair] = []
    checked = right = 0
    stream = candidate_pairs(template, values, position, seed, model, add_bos, limit, stats)
    while len(kept) < n_examples and (batch := list(itertools.islice(stream, batch_size))):
        for pair, ok in zip(batch, right_on_clean(model, batch), strict=True):
            checked += 1
            right += ok
            if ok and len(kept) < n_examples:
                kept.append(pair)
    if len(kept) < n_examples:
        dropped = ", ".join(f"{n} {why}" for why, n in stats.items() if why != "drawn") or "none malformed"
        raise TaskError(f"counterfactual pairs: found {len(kept)} of the {n_examples} wanted in {stats['drawn']} candidates "
                        f"(dropped: {dropped}; the model got {right} of {checked} well-formed clean prompts right). "
                        "Check the template and position, lower n_examples or raise max_candidates")
    accuracy = right / checked
    log.info("counterfactual pairs: kept %d; the model got %d of %d well-formed clean prompts right", len(kept), right, checked)
    return Task(
        name=name,
        clean=torch.tensor([p.clean for p in kept]),
        corrupt=torch.tensor([p.corrupt for p in kept]),
        answers=torch.tensor([[p.answer] for p in kept]),
        foils=torch.tensor([[p.foil] for p in kept]),
        default_metric="logit_diff",
        info={"seed": seed, "position": position, "candidates": stats["drawn"], "checked": checked,
              "clean_accuracy": round(accuracy, 4), "values": [[str(p.clean_value), str(p.corrupt_value)] for p in kept],
              "corruption": f"the token at position {position} changed (another value of the template's slot)",
              "foil": "the corrupted prompt's answer"},
    )
