"""Two-digit addition: "What is 57 + 12? Answer:" -> " 69".

Operands a, b are two-digit numbers (10..99). The corrupted prompt has both operands replaced by
other two-digit numbers a', b'. Answers are tokens as the model's tokenizer splits them: the sum is
written after the prompt (" 69" after "Answer:") and tokenized with the prompt, and the answer is
the FIRST token of the sum (a whole number under GPT-2 for most sums, one digit under digit-level
tokenizers). If that first token is only whitespace (SentencePiece's lone "▁" before digits) it is
the same for every sum, so it joins the prompt and the answer is the token after it. The foil is
the first token of the corrupted sum a' + b'; corrupted operands are drawn until that token differs
from the answer. Metric: logit difference answer - foil at the last position.

Works with BPE and digit-level tokenizers whose prompts all tokenize to the same length (GPT-2,
Llama), and with word-level vocabularies that contain the words `What is + ? Answer :` and numbers
as words (there the prompt is written "What is 57 + 12 ? Answer :" and the answer is the word
"69"; only operand pairs whose operands and sum are all in the vocabulary are used). Anything else
raises TaskError saying what is missing.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import torch
from torch import nn

from acdc_lite.task import Task, TaskError, Vocabulary, text_vocabulary

log = logging.getLogger(__name__)

DESCRIPTION = "Addition: 'What is 57 + 12? Answer:' -> first token of ' 69'; operands corrupted; logit diff answer - foil"

FIXED_WORDS = ["What", "is", "+", "?", "Answer", ":"]
OPERANDS = range(10, 100)


def _text(a: int, b: int, word_level: bool) -> str:
    return f"What is {a} + {b} ? Answer :" if word_level else f"What is {a} + {b}? Answer:"


class _Writer:
    """Prompt and first answer token for operands (a, b) under one vocabulary; None when the split is off."""

    def __init__(self, vocab: Vocabulary):
        self.vocab, self.word_level, self.bos = vocab, vocab.words is not None, vocab.bos
        self.cache: dict[tuple[int, int], tuple[list[int], int] | None] = {}

    def __call__(self, a: int, b: int) -> tuple[list[int], int] | None:
        if (a, b) not in self.cache:
            self.cache[(a, b)] = self._write(a, b)
        return self.cache[(a, b)]

    def _write(self, a: int, b: int) -> tuple[list[int], int] | None:
        start = [self.bos] if self.bos is not None else []
        prompt_text = _text(a, b, self.word_level)
        try:
            prompt = self.vocab.encode(prompt_text)
        except TaskError:
            return None
        if self.word_level:
            try:
                return start + prompt, self.vocab.single(str(a + b))
            except TaskError:
                return None
        full = self.vocab.encode(f"{prompt_text} {a + b}")
        if full[:len(prompt)] != prompt or len(full) == len(prompt):
            return None  # the tokenizer merged the sum with the end of the prompt
        rest = full[len(prompt):]
        if not self.vocab.decode(rest[:1])[0].strip():
            if len(rest) < 2:
                return None
            prompt, rest = prompt + rest[:1], rest[1:]
        return start + prompt, rest[0]


def build(model: nn.Module, n_examples: int = 64, seed: int = 0) -> Task:
    """The addition task for `model`'s tokenizer or word vocabulary (see the module docstring)."""
    vocab = text_vocabulary(model, "addition", n_examples)
    write = _Writer(vocab)
    if vocab.words is not None:
        missing = [w for w in FIXED_WORDS if w not in vocab.words]
        if missing:
            raise TaskError(f"addition: words missing from this model's vocabulary: {' '.join(missing)}")
        pairs = [(a, b) for a in OPERANDS for b in OPERANDS if write(a, b) is not None]
        if len(pairs) < 2:
            raise TaskError(f"addition needs two-digit operands a, b with a, b and a + b all words of this vocabulary; "
                            f"found {len(pairs)} such pair(s); add the numbers 10..198 as words")
    else:
        pairs = [(a, b) for a in OPERANDS for b in OPERANDS]
    rng = random.Random(seed)
    # the common prompt length, from a sample of operand pairs
    probe = [w for w in (write(*p) for p in rng.sample(pairs, min(len(pairs), 20))) if w is not None]
    if not probe:
        raise TaskError("addition: no prompt 'What is a + b? Answer:' can be written with this tokenizer")
    seq_len = Counter(len(w[0]) for w in probe).most_common(1)[0][0]

    rows = []
    attempts = 0
    while len(rows) < n_examples:
        attempts += 1
        if attempts > 20 * n_examples + 100:
            raise TaskError("addition: could not build clean and corrupted prompts of equal length with different "
                            "first answer tokens in this vocabulary")
        a, b = rng.choice(pairs)
        clean = write(a, b)
        if clean is None or len(clean[0]) != seq_len:
            continue
        for _ in range(20):
            a2, b2 = rng.choice(pairs)
            corrupt = write(a2, b2)
            if a2 != a and b2 != b and corrupt is not None and len(corrupt[0]) == seq_len and corrupt[1] != clean[1]:
                rows.append((clean, corrupt, (a, b), (a2, b2)))
                break
    return Task(
        name="addition",
        clean=torch.tensor([r[0][0] for r in rows]),
        corrupt=torch.tensor([r[1][0] for r in rows]),
        answers=torch.tensor([[r[0][1]] for r in rows]),
        foils=torch.tensor([[r[1][1]] for r in rows]),
        default_metric="logit_diff",
        info={"seed": seed, "operands": [list(r[2]) for r in rows], "corrupt_operands": [list(r[3]) for r in rows],
              "bos": vocab.bos is not None,
              "answer": "first token of the sum as the tokenizer splits it", "foil": "first token of the corrupted sum",
              "corruption": "both operands replaced by other two-digit numbers"},
    )
