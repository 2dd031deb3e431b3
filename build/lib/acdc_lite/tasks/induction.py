"""Induction: finish a repeated segment of random tokens.

Each prompt is BOS, random filler, a segment A of 3-6 random tokens, more filler, and then the
first m tokens of A again at the very end; the answer is A[m]. No token occurs twice except the
repeated part of A. Segment length, m and the gap between
the two occurrences vary from prompt to prompt, so neither a fixed positional offset nor unigram
statistics can predict the answer: the model needs a previous-token head and an induction head.
The corrupted prompt replaces the earlier occurrence of A with other random tokens (same length).
The foil is a filler token of the prompt (present in both the clean and the corrupted prompt).

Works for any model: word-level zoo vocabularies, Hugging Face tokenizers (random single tokens from
the vocabulary, special tokens excluded), and models with no tokenizer (random ids below the
vocabulary size; BOS from the model config, else id 0).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from acdc_lite.task import Task, TaskError, Vocabulary

log = logging.getLogger(__name__)

DESCRIPTION = "Induction: complete a repeated random-token segment (varying length and offset); corrupt breaks the repeat"

SEQ_LEN = 24  # tokens per prompt, BOS included
MIN_SEG, MAX_SEG = 3, 6  # segment length


def token_pool(model: nn.Module) -> tuple[list[int], int | None]:
    """(ids to draw random tokens from, BOS id or None) for `model`."""
    from acdc_lite.models import model_info

    d_vocab = model_info(model).d_vocab
    try:
        vocab = Vocabulary.of(model)
    except TaskError:
        vocab = None
    if vocab is not None and vocab.words:
        special = {i for i, w in enumerate(vocab.words) if w.startswith("<") and w.endswith(">")}
        pool = [i for i in range(min(len(vocab.words), d_vocab)) if i not in special]
        return pool, vocab.bos
    if vocab is not None:
        tok = vocab.tokenizer
        special = set(tok.all_special_ids)
        pool = [i for i in range(min(len(tok), d_vocab)) if i not in special]
        return pool, tok.bos_token_id
    bos = getattr(getattr(model, "cfg", None), "bos_token_id", None)
    bos = 0 if bos is None or not 0 <= bos < d_vocab else int(bos)
    return [i for i in range(d_vocab) if i != bos], bos


def make_prompts(pool: list[int], bos: int | None, n: int, seed: int, seq_len: int = SEQ_LEN,
                 min_seg: int = MIN_SEG, max_seg: int = MAX_SEG) -> dict[str, torch.Tensor]:
    """Induction prompts drawn from `pool`: clean, corrupt [n, seq_len]; answers, foils [n, 1];
    seg_len, prefix_len, gap [n] (the segment, how much of it is repeated at the end, tokens in between)."""
    first = 0 if bos is None else 1
    if len(pool) < seq_len + 2 * max_seg:
        raise TaskError(f"induction needs at least {seq_len + 2 * max_seg} distinct tokens; this vocabulary has {len(pool)}")
    if seq_len - first < 2 * max_seg + 2:
        raise TaskError(f"induction prompts of {seq_len} tokens are too short for segments of up to {max_seg} tokens")
    g = torch.Generator().manual_seed(seed)
    pool_t = torch.tensor(pool)
    rows: dict[str, list] = {k: [] for k in ("clean", "corrupt", "answers", "foils", "seg_len", "prefix_len", "gap")}
    for _ in range(n):
        seg_len = int(torch.randint(min_seg, max_seg + 1, (1,), generator=g))
        prefix_len = int(torch.randint(1, seg_len, (1,), generator=g))  # tokens of A repeated at the end
        room = seq_len - first - seg_len - prefix_len  # filler tokens to place before A and in the gap
        gap = int(torch.randint(0, room + 1, (1,), generator=g))
        start = seq_len - prefix_len - gap - seg_len  # position of A's first occurrence
        # all distinct: the segment, its replacement in the corrupted prompt, the filler
        perm = pool_t[torch.randperm(len(pool_t), generator=g)]
        seg, other, filler = perm[:seg_len], perm[seg_len:2 * seg_len], perm[2 * seg_len:2 * seg_len + seq_len]
        clean = filler.clone()
        if bos is not None:
            clean[0] = bos
        clean[start:start + seg_len] = seg
        clean[seq_len - prefix_len:] = seg[:prefix_len]
        corrupt = clean.clone()
        corrupt[start:start + seg_len] = other
        filler_pos = [p for p in range(first, seq_len) if p < start or start + seg_len <= p < seq_len - prefix_len]
        foil = clean[filler_pos[int(torch.randint(0, len(filler_pos), (1,), generator=g))]] if filler_pos else filler[-1]
        for key, value in (("clean", clean), ("corrupt", corrupt), ("answers", seg[prefix_len:prefix_len + 1]),
                           ("foils", foil.view(1)), ("seg_len", seg_len), ("prefix_len", prefix_len), ("gap", gap)):
            rows[key].append(value)
    out = {k: torch.stack(v) for k, v in rows.items() if k in ("clean", "corrupt", "answers", "foils")}
    out.update({k: torch.tensor(rows[k]) for k in ("seg_len", "prefix_len", "gap")})
    return out


def build(model: nn.Module, n_examples: int = 64, seed: int = 0) -> Task:
    """The induction task for `model` (see the module docstring)."""
    pool, bos = token_pool(model)
    if bos is None:
        log.info("induction: this model has no BOS token; prompts start with a filler token")
    p = make_prompts(pool, bos, n_examples, seed)
    return Task(
        name="induction",
        clean=p["clean"],
        corrupt=p["corrupt"],
        answers=p["answers"],
        foils=p["foils"],
        default_metric="logit_diff",
        info={"seed": seed, "seq_len": SEQ_LEN, "segment_length": [MIN_SEG, MAX_SEG], "bos": bos,
              "corruption": "earlier occurrence of the segment replaced by other random tokens"},
    )
