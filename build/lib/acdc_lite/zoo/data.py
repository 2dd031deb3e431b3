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


# ---- the greater-than language ----------------------------------------------------------------
# "<bos> [opening] The NOUN lasted from the year 17 YY to the year 17 ZZ" with ZZ uniform over the
# years after YY; the tokenizer splits "1732" into "17" + "32" (see train.year_pair_tokenizer), so
# the built-in greater-than task writes its prompts in the GPT-2 style and they tokenize like these.
GT_OPENINGS = ["", "Then ,", "Long ago ,", "In history ,"]
GT_WORDS = ["The", "lasted", "from", "the", "year", "to", "17"]


def _greater_than_module():
    from acdc_lite.zoo.measure import builtin_task_module

    return builtin_task_module("greater_than")


def greater_than_vocab() -> list[str]:
    """<bos>, <pad>, the template and opening words, the nouns of tasks/greater_than.py, then "00".."99"."""
    gt = _greater_than_module()
    words = list(IOI_SPECIALS) + list(GT_WORDS)
    for text in GT_OPENINGS:
        words += [w for w in text.split() if w not in words]
    return words + list(gt.NOUNS) + [f"{y:02d}" for y in range(100)]


def greater_than_held_out(noun_index: int, yy: int) -> bool:
    """(noun, start year) pairs never seen in training: one in ten."""
    return (3 * noun_index + yy) % 10 == 0


@dataclass(frozen=True)
class GreaterThanRecipe:
    first_yy: int = 1  # start years 17YY with YY in first_yy..last_yy ("01", the task's corruption, included)
    last_yy: int = 98
    p_opening: float = 0.5
    unpredictable_weight: float = 0.1  # loss weight of every next token but the end year

    def describe(self) -> str:
        return (f"BOS, with probability {self.p_opening} an opening ({', '.join(repr(o) for o in GT_OPENINGS if o)}), then "
                f"'The NOUN lasted from the year 17 YY to the year 17 ZZ' (NOUN one of the {len(_greater_than_module().NOUNS)} "
                f"of tasks/greater_than.py, YY uniform in {self.first_yy:02d}..{self.last_yy:02d}, ZZ uniform in YY+1..99; "
                f"the (noun, YY) pairs with (3 noun index + YY) mod 10 == 0 held out); "
                f"right-padded; loss weight 1 on ZZ, {self.unpredictable_weight} on the other tokens, 0 on padding")


def greater_than_batch(n: int, seq_len: int, recipe: GreaterThanRecipe, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [n, seq_len] (right-padded) and loss weights [n, seq_len - 1]."""
    vocab = greater_than_vocab()
    index = {w: i for i, w in enumerate(vocab)}
    nouns = _greater_than_module().NOUNS
    tokens = torch.full((n, seq_len), index["<pad>"], dtype=torch.long)
    weights = torch.zeros(n, seq_len - 1)
    for i in range(n):
        opening = GT_OPENINGS[1 + int(torch.randint(len(GT_OPENINGS) - 1, (1,), generator=g))] \
            if float(torch.rand(1, generator=g)) < recipe.p_opening else ""
        while True:
            k = int(torch.randint(len(nouns), (1,), generator=g))
            yy = int(torch.randint(recipe.first_yy, recipe.last_yy + 1, (1,), generator=g))
            if not greater_than_held_out(k, yy):
                break
        noun = nouns[k]
        zz = int(torch.randint(yy + 1, 100, (1,), generator=g))
        text = f"{opening} The {noun} lasted from the year 17 {yy:02d} to the year 17 {zz:02d}"
        ids = [index["<bos>"]] + [index[w] for w in text.split()]
        if len(ids) > seq_len:
            raise ValueError(f"a greater-than sentence of {len(ids)} tokens does not fit seq_len {seq_len}")
        tokens[i, :len(ids)] = torch.tensor(ids)
        weights[i, :len(ids) - 1] = recipe.unpredictable_weight
        weights[i, len(ids) - 2] = 1.0
    return tokens, weights


# ---- the addition language --------------------------------------------------------------------
# "<bos> What is 5 7 + 1 2 ? Answer : 6 9" with digits as single tokens (train.digit_tokenizer splits
# "57" into "5" "7"), so the built-in addition task's prompts "What is 57 + 12? Answer:" tokenize like
# these and its answer is the first digit of the sum.
ADDITION_WORDS = ["<bos>", "<pad>", "What", "is", "+", "?", "Answer", ":"] + [str(d) for d in range(10)]


def addition_held_out(a: int, b: int) -> bool:
    """Operand pairs never seen in training (one in ten, spread over carry and no-carry pairs)."""
    return (7 * a + 3 * b) % 10 == 0


@dataclass(frozen=True)
class AdditionRecipe:
    answer_weight: float = 1.0  # loss weight of every digit of the sum
    unpredictable_weight: float = 0.1  # loss weight of the other next tokens

    def describe(self) -> str:
        return ("BOS 'What is A1 A0 + B1 B0 ? Answer :' then the digits of A + B (A, B uniform in 10..99, one digit per "
                "token; operand pairs with (7 A + 3 B) mod 10 == 0 held out), right-padded; loss weight "
                f"{self.answer_weight} on the sum's digits, {self.unpredictable_weight} on the other tokens, 0 on padding")


def addition_ids(a: int, b: int) -> list[int]:
    index = {w: i for i, w in enumerate(ADDITION_WORDS)}
    text = f"What is {' '.join(str(a))} + {' '.join(str(b))} ? Answer : {' '.join(str(a + b))}"
    return [index["<bos>"]] + [index[w] for w in text.split()]


def addition_batch(n: int, seq_len: int, recipe: AdditionRecipe, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [n, seq_len] (right-padded) and loss weights [n, seq_len - 1]; held-out operand pairs are redrawn."""
    pad = ADDITION_WORDS.index("<pad>")
    tokens = torch.full((n, seq_len), pad, dtype=torch.long)
    weights = torch.zeros(n, seq_len - 1)
    prompt_len = len(addition_ids(10, 10)) - 2  # BOS ... ":" (the sum of 10 + 10 has two digits)
    for i in range(n):
        while True:
            a, b = (int(x) for x in torch.randint(10, 100, (2,), generator=g))
            if not addition_held_out(a, b):
                break
        ids = addition_ids(a, b)
        tokens[i, :len(ids)] = torch.tensor(ids)
        weights[i, :len(ids) - 1] = recipe.unpredictable_weight
        weights[i, prompt_len - 1:len(ids) - 1] = recipe.answer_weight
    return tokens, weights


# ---- the docstring language -------------------------------------------------------------------
# The built-in docstring task's word-level prompts ('def f ( self , a , b , c , d ) : """ w w w :param a : w w
# :param b : w w :param' -> c) with varying counts: 2-6 arguments, 1 to all-but-one documented, 1-4 words of
# summary and 1-3 of each description, so neither the answer's position nor its offset from the end is fixed.
def _docstring_module():
    from acdc_lite.zoo.measure import builtin_task_module

    return builtin_task_module("docstring")


def docstring_vocab() -> list[str]:
    """<bos>, <pad>, the fixed words of tasks/docstring.py, then its argument names, description words and function names."""
    ds = _docstring_module()
    return list(IOI_SPECIALS) + list(ds.FIXED_WORDS) + list(ds.ARGS) + list(ds.WORDS) + list(ds.FUNCTIONS)


@dataclass(frozen=True)
class DocstringRecipe:
    min_args: int = 2
    max_args: int = 6
    max_summary: int = 4
    max_description: int = 3
    unpredictable_weight: float = 0.1  # loss weight of the tokens that are not a documented name after ':param'

    def describe(self) -> str:
        return (f"BOS then 'def FN ( self , A1 , ... , An ) : \"\"\" summary :param A1 : description ... :param Ak' with "
                f"n = {self.min_args}-{self.max_args} distinct argument names of tasks/docstring.py, k = 1..n documented in "
                f"order, 1-{self.max_summary} summary words and 1-{self.max_description} words per description (words of "
                f"tasks/docstring.py); right-padded, cut at the sequence length; loss "
                f"weight 1 on every name after ':param', {self.unpredictable_weight} on the other tokens, 0 on padding")


def docstring_batch(n: int, seq_len: int, recipe: DocstringRecipe, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [n, seq_len] (right-padded; sentences are cut at seq_len) and loss weights [n, seq_len - 1]."""
    ds = _docstring_module()
    vocab = docstring_vocab()
    index = {w: i for i, w in enumerate(vocab)}

    def rand(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def words(k: int) -> list[str]:
        return [ds.WORDS[int(i)] for i in torch.randint(len(ds.WORDS), (k,), generator=g)]

    tokens = torch.full((n, seq_len), index["<pad>"], dtype=torch.long)
    weights = torch.zeros(n, seq_len - 1)
    for i in range(n):
        n_args = rand(recipe.min_args, recipe.max_args)
        args = [ds.ARGS[int(j)] for j in torch.randperm(len(ds.ARGS), generator=g)[:n_args]]
        fn = ds.FUNCTIONS[rand(0, len(ds.FUNCTIONS) - 1)]
        text = ["def", fn, "(", "self"] + [w for a in args for w in (",", a)] + [")", ":", '"""'] + words(rand(1, recipe.max_summary))
        names = []  # positions of the names after ':param'
        for a in args[:rand(1, n_args)]:
            text += [":param", a]
            names.append(len(text) - 1)
            text += [":"] + words(rand(1, recipe.max_description))
        ids = ([index["<bos>"]] + [index[w] for w in text])[:seq_len]
        tokens[i, :len(ids)] = torch.tensor(ids)
        weights[i, :len(ids) - 1] = recipe.unpredictable_weight
        for p in names:
            if p < len(ids) - 1:  # +1 for BOS: the name sits at p + 1, predicted from position p
                weights[i, p] = 1.0
    return tokens, weights
