"""Training data for the zoo's induction models: random segments, each repeated.

A sequence is BOS (id 0) then segments of `min_seg`-`max_seg` random tokens (ids 1..n_tokens-1),
each followed by a copy of itself, either at once (x x y y ...) or after a gap of fresh random
tokens (x g x ...). Segment lengths and gaps vary, so no fixed positional offset predicts the copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SegmentRecipe:
    min_seg: int = 4
    max_seg: int = 10
    p_gap: float = 0.0  # probability that a copy comes after a gap instead of at once
    max_gap: int = 0  # gap length is uniform in 1..max_gap
    unpredictable_weight: float = 0.1  # loss weight of positions whose next token is not a copy

    def describe(self) -> str:
        gap = f", with probability {self.p_gap} after a gap of 1-{self.max_gap} random tokens" if self.p_gap else " at once"
        return (f"BOS then random segments of {self.min_seg}-{self.max_seg} tokens, each repeated{gap}; "
                f"loss weight 1 on predictable next tokens (copy tokens after the first), "
                f"{self.unpredictable_weight} elsewhere")


def segment_batch(n: int, seq_len: int, n_tokens: int, recipe: SegmentRecipe, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [n, seq_len] and loss weights [n, seq_len - 1] (weight of predicting token t + 1 at t)."""
    tokens = torch.randint(1, n_tokens, (n, seq_len), generator=g)
    tokens[:, 0] = 0
    weights = torch.full((n, seq_len - 1), recipe.unpredictable_weight)
    for i in range(n):
        pos = 1
        while pos < seq_len:
            seg = int(torch.randint(recipe.min_seg, recipe.max_seg + 1, (1,), generator=g))
            gap = 0
            if recipe.p_gap and float(torch.rand(1, generator=g)) < recipe.p_gap:
                gap = int(torch.randint(1, recipe.max_gap + 1, (1,), generator=g))
            copy = pos + seg + gap  # the copy starts here; tokens in between stay random
            for j in range(seg):
                if copy + j >= seq_len:
                    break
                tokens[i, copy + j] = tokens[i, pos + j]
                if j > 0:
                    weights[i, copy + j - 1] = 1.0
            pos = copy + seg
    return tokens, weights


def repeated_random(n: int, half: int, n_tokens: int, seed: int, bos: int | None = 0) -> torch.Tensor:
    """[n, 1 + 2 * half] (or 2 * half with no BOS): BOS, then R R with R random ids in 1..n_tokens-1."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(1, n_tokens, (n, half), generator=g)
    seq = torch.cat([r, r], dim=1)
    if bos is None:
        return seq
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), seq], dim=1)


# ---- the IOI language -----------------------------------------------------------------------
# Word-level sentences built from the IOI task's word lists and templates (tasks/ioi.py), plus a
# few more templates of other lengths and optional openings, so names sit at varying positions.
# Each training sentence ends with the indirect object: "... , S gave a O to IO".
IOI_EXTRA_TEMPLATES = [
    "When {A} and {B} went to the {P} , {S} gave the {O} to",
    "{A} and {B} went to the {P} , and {S} gave a {O} to",
    "After {A} and {B} went to the {P} together , {S} gave a {O} to",
    "While {A} and {B} were working at the {P} , {S} handed the {O} to",
    "Today {A} and {B} had a long day at the {P} . {S} passed a {O} to",
]
IOI_OPENINGS = ["", "Then ,", "Later ,", "Yesterday ,", "In the morning ,"]
IOI_SPECIALS = ["<bos>", "<pad>"]


def _ioi_module():
    from acdc_lite.zoo.measure import builtin_task_module

    return builtin_task_module("ioi")


def ioi_templates() -> list[str]:
    return list(_ioi_module().TEMPLATES) + IOI_EXTRA_TEMPLATES


def ioi_vocab() -> list[str]:
    """<bos>, <pad>, the template and opening words in order of first use, then names, places, objects."""
    ioi = _ioi_module()
    words = list(IOI_SPECIALS)
    for text in ioi_templates() + IOI_OPENINGS:
        for w in text.split():
            if not w.startswith("{") and w not in words:
                words.append(w)
    return words + [w for w in ioi.NAMES + ioi.PLACES + ioi.OBJECTS if w not in words]


@dataclass(frozen=True)
class IOIRecipe:
    p_opening: float = 0.5  # probability of a sentence opening ("Then ,", ...) before the template
    p_extra: float = 0.3  # probability of one of IOI_EXTRA_TEMPLATES instead of the task's templates
    unpredictable_weight: float = 0.1  # loss weight of every next token but the final indirect object

    def describe(self) -> str:
        return (f"BOS, with probability {self.p_opening} an opening ({', '.join(repr(o) for o in IOI_OPENINGS if o)}), "
                f"then an IOI sentence (ABBA or BABA order of two distinct random names of tasks/ioi.py, IO and S, with "
                f"S repeated) ending with the indirect object; templates: the {len(_ioi_module().TEMPLATES)} of "
                f"tasks/ioi.py, with probability {self.p_extra} one of {len(IOI_EXTRA_TEMPLATES)} others; "
                f"right-padded; loss weight 1 on the final IO, {self.unpredictable_weight} on the other tokens, 0 on padding")


def ioi_sentence(g: torch.Generator, recipe: IOIRecipe, vocab: list[str]) -> tuple[list[int], int]:
    """(token ids BOS ... to IO, position of IO's first mention) of one random sentence."""
    ioi = _ioi_module()
    index = {w: i for i, w in enumerate(vocab)}

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    templates = IOI_EXTRA_TEMPLATES if float(torch.rand(1, generator=g)) < recipe.p_extra else list(ioi.TEMPLATES)
    template = pick(templates)
    opening = pick(IOI_OPENINGS[1:]) if float(torch.rand(1, generator=g)) < recipe.p_opening else ""
    io, s = (ioi.NAMES[int(i)] for i in torch.randperm(len(ioi.NAMES), generator=g)[:2])
    first, second = (io, s) if float(torch.rand(1, generator=g)) < 0.5 else (s, io)
    text = " ".join(filter(None, [opening, template.format(A=first, B=second, S=s, P=pick(ioi.PLACES), O=pick(ioi.OBJECTS)), io]))
    ids = [index["<bos>"]] + [index[w] for w in text.split()]
    return ids, ids.index(index[io])


def ioi_batch(n: int, seq_len: int, recipe: IOIRecipe, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [n, seq_len] (right-padded with <pad>) and loss weights [n, seq_len - 1]."""
    vocab = ioi_vocab()
    pad = vocab.index("<pad>")
    tokens = torch.full((n, seq_len), pad, dtype=torch.long)
    weights = torch.zeros(n, seq_len - 1)
    for i in range(n):
        ids, _ = ioi_sentence(g, recipe, vocab)
        if len(ids) > seq_len:
            raise ValueError(f"an IOI sentence of {len(ids)} tokens does not fit seq_len {seq_len}")
        tokens[i, :len(ids)] = torch.tensor(ids)
        weights[i, :len(ids) - 1] = recipe.unpredictable_weight
        weights[i, len(ids) - 2] = 1.0
    return tokens, weights
