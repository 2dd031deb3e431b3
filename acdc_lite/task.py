"""`Task`: clean and corrupted prompts, answer (and foil) tokens, and metrics. Never loads a model.

Sign convention, for every metric: higher = more of the clean behaviour. Metrics are per example:
`metric(logits [b, pos, vocab], example_indices [b]) -> [b]`; searches average them. A task may add
its own metrics (e.g. over every position, for tracr programs) in `custom_metrics`: name ->
factory `(task, model or None) -> metric`; other names resolve through `acdc_lite.metrics`.

Prompts of different lengths are padded (`padding_side`, the model tokenizer's by default) and carry an
`attention_mask`; clean and corrupted prompts of one example have the same length (so resample ablation
pairs them position by position), examples may differ. Each example's answer is read at its own
`answer_pos`. An answer of several tokens (`answer_seqs`) is teacher-forced: its tokens but the last
follow the prompt, and its k-th token is predicted at `answer_pos + k`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from acdc_lite import metrics as metric_registry
from acdc_lite.boundary import read_text
from acdc_lite.faithfulness import gap_is_zero
from acdc_lite.metrics import PositionMetric
from acdc_lite.padding import PaddingSide, first_real, forward, pad_id_of, pad_rows, padding_side_of

log = logging.getLogger(__name__)

SINGLE_TOKEN_METRICS = ("logit_diff", "prob_diff", "logprob", "accuracy")
SEQUENCE_METRICS = ("seq_logprob", "seq_logit_diff")
METRICS = SINGLE_TOKEN_METRICS[:3] + ("kl", "accuracy") + SEQUENCE_METRICS


class TaskError(ValueError):
    """Bad task input; the message names the example or line and the fix."""


def _pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


def _lengths(ids: torch.Tensor) -> torch.Tensor:
    """Lengths of -1-padded id rows: [N, K] -> [N]."""
    return (ids >= 0).sum(1)


@dataclass(frozen=True, repr=False)
class Task:
    """N examples padded to P tokens; answers/foils are [N, K] id sets padded with -1 (alternatives, any of
    which is right). attention_mask [N, P] is True at real tokens (default: all). answer_seqs / foil_seqs
    [N, T] (-1 padded): the tokens of an answer of several tokens, for the sequence metrics."""

    name: str
    clean: torch.Tensor  # [N, P]
    corrupt: torch.Tensor  # [N, P]
    answers: torch.Tensor  # [N, K]
    foils: torch.Tensor | None = None  # [N, K']
    answer_pos: torch.Tensor | None = None  # [N], default: each prompt's last real position
    default_metric: str = "logit_diff"
    info: dict = field(default_factory=dict)  # templates, seed, ... (goes into circuit files)
    custom_metrics: dict[str, Callable] = field(default_factory=dict, compare=False, repr=False)  # name -> factory(task, model)
    attention_mask: torch.Tensor | None = None  # [N, P] bool, shared by clean and corrupt
    padding_side: PaddingSide = PaddingSide.RIGHT
    answer_seqs: torch.Tensor | None = None  # [N, T]
    foil_seqs: torch.Tensor | None = None  # [N, T']

    def __post_init__(self):
        n = len(self.clean)
        if n == 0:
            raise TaskError(f"task {self.name!r} has no examples; give at least one clean/corrupt pair")
        if self.clean.dim() != 2 or self.corrupt.shape != self.clean.shape:
            bad = self.clean.shape, self.corrupt.shape
            raise TaskError(f"task {self.name!r}: clean {tuple(bad[0])} and corrupt {tuple(bad[1])} prompts must have the "
                            "same [examples, tokens] shape")
        for label, t in (("answers", self.answers), ("foils", self.foils), ("answer_seqs", self.answer_seqs),
                         ("foil_seqs", self.foil_seqs)):
            if t is not None and (t.dim() != 2 or len(t) != n or not (t[:, 0] >= 0).all()):
                raise TaskError(f"task {self.name!r}: {label} must hold at least one token id for each of the {n} examples")
        object.__setattr__(self, "padding_side", PaddingSide(self.padding_side))
        if self.attention_mask is None:
            object.__setattr__(self, "attention_mask", torch.ones_like(self.clean, dtype=torch.bool))
        elif self.attention_mask.shape != self.clean.shape:
            raise TaskError(f"task {self.name!r}: attention mask {tuple(self.attention_mask.shape)} does not match the "
                            f"prompts {tuple(self.clean.shape)}")
        else:
            object.__setattr__(self, "attention_mask", self.attention_mask.bool())
        if not self.attention_mask.any(1).all():
            raise TaskError(f"task {self.name!r}: example {int((~self.attention_mask.any(1)).nonzero()[0])} has no real token")
        if self.answer_pos is None:
            last = self.clean.shape[1] - 1 - self.attention_mask.flip(1).long().argmax(1)
            object.__setattr__(self, "answer_pos", last)
        self._check_positions()
        if self.default_metric not in self.metric_names:
            self._resolve_metric(self.default_metric)

    def __repr__(self) -> str:
        padded = int((~self.attention_mask).sum())
        parts = [repr(self.name), f"examples={len(self)}", f"tokens={self.seq_len}", f"metric={self.default_metric!r}",
                 f"answers_per_example={self.answers.shape[1]}", f"foils={'yes' if self.foils is not None else 'no'}"]
        if padded:
            parts.append(f"padding={self.padding_side.value} ({padded} pad tokens)")
        return f"Task({', '.join(parts)})"

    def _check_positions(self) -> None:
        rows = torch.arange(len(self))
        if not (self.answer_pos >= 0).all() or not (self.answer_pos < self.seq_len).all() \
                or not self.attention_mask[rows, self.answer_pos].all():
            i = int((~self.attention_mask[rows, self.answer_pos.clamp(0, self.seq_len - 1)]).nonzero()[0]) \
                if (self.answer_pos >= 0).all() and (self.answer_pos < self.seq_len).all() else 0
            raise TaskError(f"task {self.name!r}, example {i}: answer position {int(self.answer_pos[i])} is not a real "
                            "(unpadded) position of its prompt")
        if self.answer_seqs is None:
            return
        for i in range(len(self)):
            seq = self.answer_seqs[i][self.answer_seqs[i] >= 0]
            p = int(self.answer_pos[i])
            fed = self.clean[i, p + 1:p + len(seq)]
            if p + len(seq) > self.seq_len or not self.attention_mask[i, p:p + len(seq)].all() \
                    or not torch.equal(fed, seq[:-1]):
                raise TaskError(f"task {self.name!r}, example {i}: the answer's first {len(seq) - 1} tokens must follow "
                                f"the answer position {p} in the prompt (teacher forcing); build the task with task_from_rows")

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def seq_len(self) -> int:
        return self.clean.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        """Real tokens per example: [N]."""
        return self.attention_mask.sum(1)

    @property
    def multi_token(self) -> bool:
        """True when some answer (or foil) is several tokens."""
        return any(t is not None and bool((_lengths(t) > 1).any()) for t in (self.answer_seqs, self.foil_seqs))

    def check_vocab(self, d_vocab: int) -> None:
        """Raise TaskError naming the first example with a token id outside [0, d_vocab)."""
        for label, t in (("clean", self.clean), ("corrupt", self.corrupt), ("answers", self.answers), ("foils", self.foils),
                         ("answer_seqs", self.answer_seqs), ("foil_seqs", self.foil_seqs)):
            if t is None:
                continue
            bad = ((t >= d_vocab) | (t < -1) | ((t < 0) & (label in ("clean", "corrupt")))).any(dim=1).nonzero()
            if len(bad):
                i = int(bad[0])
                raise TaskError(f"task {self.name!r}, example {i}: {label} token ids {t[i].tolist()} fall outside the "
                                f"model's vocabulary of {d_vocab}; build the task with this model's tokenizer")

    def subset(self, idx: torch.Tensor) -> Task:
        """The examples at `idx` (e.g. a bootstrap resample)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return replace(self, clean=self.clean[idx], corrupt=self.corrupt[idx], answers=self.answers[idx],
                       foils=pick(self.foils), answer_pos=self.answer_pos[idx], attention_mask=self.attention_mask[idx],
                       answer_seqs=pick(self.answer_seqs), foil_seqs=pick(self.foil_seqs))

    def with_padding(self, side: PaddingSide | str, pad_id: int | None = None) -> Task:
        """The same examples padded on `side` (pads filled with `pad_id`, default the current pad token)."""
        side = PaddingSide(side)
        if side is self.padding_side:
            return self
        start, lengths = first_real(self.attention_mask), self.lengths
        if pad_id is None:
            pad_id = int(self.clean[~self.attention_mask][0]) if not self.attention_mask.all() else 0
        rows = [(self.clean[i, s:s + n].tolist(), self.corrupt[i, s:s + n].tolist())
                for i, (s, n) in enumerate(zip(start.tolist(), lengths.tolist(), strict=True))]
        clean, mask = pad_rows([r[0] for r in rows], side, pad_id)
        corrupt, _ = pad_rows([r[1] for r in rows], side, pad_id)
        new_start = first_real(mask)
        return replace(self, clean=clean, corrupt=corrupt, attention_mask=mask, padding_side=side,
                       answer_pos=self.answer_pos - start + new_start)

    def describe(self) -> dict:
        """What a circuit file records of its task: name, sizes, metric, padding and the task's settings.
        Per-example lists in `info` (one entry per prompt) stay out, so a file does not grow with n_examples."""
        settings = {k: v for k, v in self.info.items() if not (isinstance(v, (list, tuple)) and len(v) == len(self) > 2)}
        lengths = self.lengths
        out = {"name": self.name, "n_examples": len(self), "seq_len": self.seq_len, "metric": self.default_metric,
               "padding_side": self.padding_side.value}
        if int(lengths.min()) != self.seq_len:
            out.update(min_len=int(lengths.min()), max_len=int(lengths.max()))
        if self.multi_token:
            out["answer_tokens"] = int(_lengths(self.answer_seqs).max())
        return {**out, **settings}

    # ---- metrics ------------------------------------------------------------------------
    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRICS + tuple(self.custom_metrics)

    def _resolve_metric(self, name: str) -> Callable:
        try:
            return metric_registry.resolve(name)
        except metric_registry.MetricNotFound as e:
            raise TaskError(f"{e}. Built-in metrics: {', '.join(self.metric_names)}") from e

    def logits(self, model: nn.Module, which: str = "clean", batch_size: int = 64,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N, P, vocab] of the clean (or corrupt) prompts, run with the attention mask; with `positions`
        [N, T], only there: [N, T, vocab]."""
        tokens = self.clean if which == "clean" else self.corrupt
        dev = next(iter(model.parameters()), tokens).device
        rows = [slice(i, i + batch_size) for i in range(0, len(self), batch_size)]
        with torch.no_grad():
            return torch.cat([forward(model, tokens[r].to(dev), self.attention_mask[r].to(dev),
                                      positions=None if positions is None else positions[r].to(dev)) for r in rows])

    def metric(self, name: str | None = None, model: nn.Module | None = None) -> Callable:
        """A per-example metric (higher = more clean behaviour). `kl` needs the model (for clean logits).

        Answers of several tokens: `seq_logprob` sums the log-probabilities of the answer's tokens (each
        given the prompt and the answer's earlier tokens); `seq_logit_diff` is the logit difference answer -
        foil at the first token where they differ. Single-token metrics refuse such tasks."""
        name = name or self.default_metric
        if name in self.custom_metrics or name not in METRICS:
            factory = self.custom_metrics.get(name) or self._resolve_metric(name)
            custom = factory(self, model)
            if not callable(custom):
                raise TaskError(f"metric {name!r}: its factory returned a {type(custom).__name__}, not a metric function")
            custom.metric_name = name
            return custom
        if name in SINGLE_TOKEN_METRICS and self.multi_token:
            raise TaskError(f"task {self.name!r} has answers of several tokens: metric {name} would read only the first; "
                            "choose seq_logprob (summed log-probability of the answer's tokens) or seq_logit_diff "
                            "(logit difference at the first token where answer and foil differ)")
        if name in ("logit_diff", "prob_diff") and self.foils is None:
            raise TaskError(f"metric {name} needs foil tokens, and task {self.name!r} has none; use logprob or kl")
        if name in SEQUENCE_METRICS and self.answer_seqs is None:
            raise TaskError(f"metric {name} needs answer token sequences, and task {self.name!r} has single-token answer "
                            "sets; use logprob or logit_diff")
        if name == "seq_logit_diff" and self.foil_seqs is None:
            raise TaskError(f"metric seq_logit_diff needs foils, and task {self.name!r} has none; use seq_logprob")
        answers, foils, pos = self.answers, self.foils, self.answer_pos
        # every built-in metric reads the logits at a few positions of each example: `at` [N, T]; its function gets
        # them there, x [b, T, vocab] (see PositionMetric: a pass then unembeds only these positions)
        at = pos[:, None]

        def set_values(values, ids):  # values [b, vocab], ids [b, K] padded with -1 -> [b, K], mask [b, K]
            mask = ids >= 0
            return values.gather(1, ids.clamp(min=0)), mask

        def mean_over(values, ids):
            v, mask = set_values(values, ids)
            return (v * mask).sum(1) / mask.sum(1)

        def sum_over(values, ids):
            v, mask = set_values(values, ids)
            return (v * mask).sum(1)

        dev = lambda t, x: t.to(x.device)  # noqa: E731

        if name == "logit_diff":
            def metric(x, idx):
                x = x[:, 0]
                return mean_over(x, dev(answers, x)[idx]) - mean_over(x, dev(foils, x)[idx])
        elif name == "prob_diff":
            def metric(x, idx):
                p = x[:, 0].softmax(-1)
                return sum_over(p, dev(answers, p)[idx]) - sum_over(p, dev(foils, p)[idx])
        elif name == "logprob":
            def metric(x, idx):
                lp = x[:, 0].log_softmax(-1)
                return torch.logsumexp(lp.gather(1, dev(answers, lp)[idx].clamp(min=0))
                                       .masked_fill(dev(answers, lp)[idx] < 0, float("-inf")), dim=1)
        elif name == "accuracy":
            def metric(x, idx):
                top = x[:, 0].argmax(-1, keepdim=True)
                return (top == dev(answers, top)[idx]).any(1).float()
        elif name == "seq_logprob":
            seqs = self.answer_seqs
            at = (pos[:, None] + torch.arange(seqs.shape[1])).clamp(max=self.seq_len - 1)  # [N, T]

            def metric(x, idx):
                ids = dev(seqs, x)[idx]  # [b, T]
                lp = x.log_softmax(-1).gather(2, ids.clamp(min=0)[..., None])[..., 0]  # [b, T]
                return torch.where(ids >= 0, lp, 0).sum(1)
        elif name == "seq_logit_diff":
            offset, first_a, first_f = _first_difference(self.answer_seqs, self.foil_seqs, self.name)
            at = (pos + offset)[:, None]

            def metric(x, idx):
                x = x[:, 0]
                rows = torch.arange(len(idx), device=x.device)
                return x[rows, dev(first_a, x)[idx]] - x[rows, dev(first_f, x)[idx]]
        else:  # kl: minus KL(clean || patched) at the answer position (summed over an answer's tokens)
            if model is None:
                raise TaskError("the kl metric needs the model, to compute the clean distribution")
            n_tokens = _lengths(self.answer_seqs) if self.multi_token else torch.ones(len(self), dtype=torch.long)  # [N]
            steps = torch.arange(int(n_tokens.max()))
            at = (self.answer_pos[:, None] + steps).clamp(max=self.seq_len - 1)  # [N, T]
            real = steps < n_tokens[:, None]  # [N, T]
            clean_lp = self.logits(model, positions=at).log_softmax(-1)  # [N, T, vocab]

            def metric(x, idx):
                lp = x.log_softmax(-1)
                ref = dev(clean_lp, lp)[idx]
                kl = (ref.exp() * (ref - lp)).sum(-1)  # [b, T]
                return -torch.where(dev(real, kl)[idx], kl, 0).sum(1)
        return PositionMetric(at, metric, name)


def _same_prefix(answers: torch.Tensor, foils: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """differs [N, T] (answer and foil both have a token at t and they differ) and ok [N] (some t does)."""
    width = max(answers.shape[1], foils.shape[1])
    a = torch.nn.functional.pad(answers, (0, width - answers.shape[1]), value=-1)
    f = torch.nn.functional.pad(foils, (0, width - foils.shape[1]), value=-1)
    differs = (a != f) & (a >= 0) & (f >= 0)
    return differs, differs.any(1)


def _first_difference(answers: torch.Tensor, foils: torch.Tensor, name: str) -> tuple[torch.Tensor, ...]:
    """Per example, the first index k where answer and foil token sequences differ, and their tokens there:
    [N] offsets, [N] answer ids, [N] foil ids. TaskError if one is a prefix of the other."""
    differs, ok = _same_prefix(answers, foils)
    if not ok.all():
        i = int((~ok).nonzero()[0])
        raise TaskError(f"task {name!r}, example {i}: answer {answers[i][answers[i] >= 0].tolist()} and foil "
                        f"{foils[i][foils[i] >= 0].tolist()} do not differ at any token both have (one is a prefix of the "
                        "other); choose a foil that differs")
    k = differs.long().argmax(1)
    rows = torch.arange(len(answers))
    return k, answers[rows, k], foils[rows, k]


def task_from_rows(name: str, rows: Sequence[tuple], *, padding_side: PaddingSide | str = PaddingSide.RIGHT,
                   pad_id: int = 0, default_metric: str | None = None, info: dict | None = None,
                   where: Sequence[str] | None = None) -> Task:
    """A task from per-example token rows `(clean, corrupt, answer, foil)`: prompts of any length (clean and
    corrupt of one example equally long), answer and foil each a list of token ids (one token, or a
    sequence) or a tuple of single-token alternatives; foil may be None on every row. Answers of several
    tokens are teacher-forced (their tokens but the last are appended to both prompts). `where` names each
    row (e.g. "file:line") in errors."""
    where = list(where) if where is not None else [f"example {i}" for i in range(len(rows))]
    if not rows:
        raise TaskError(f"task {name!r} has no examples")
    has_foil = [r[3] is not None for r in rows]
    if any(has_foil) and not all(has_foil):
        raise TaskError(f"{where[has_foil.index(False)]}: foil missing; give a foil on every row or on none")
    alternatives = any(isinstance(r[k], tuple) for r in rows for k in (2, 3))
    multi = any(isinstance(r[k], list) and len(r[k]) > 1 for r in rows for k in (2, 3))
    if alternatives and multi:
        i = next(i for i, r in enumerate(rows) if isinstance(r[2], tuple) or isinstance(r[3], tuple))
        raise TaskError(f"{where[i]}: answer alternatives (a list of texts) need single-token answers, and other rows have "
                        "answers of several tokens; give one answer per row, or single-token alternatives throughout")
    clean_rows, corrupt_rows, prompt_lens = [], [], []
    for i, (clean, corrupt, answer, _foil) in enumerate(rows):
        if len(clean) != len(corrupt):
            raise TaskError(f"{where[i]}: clean is {len(clean)} tokens but corrupt is {len(corrupt)}; they must tokenize "
                            "to the same length (the corrupt prompt is patched in position by position)")
        if len(clean) == 0:
            raise TaskError(f"{where[i]}: the clean prompt is empty")
        forced = list(answer[:-1]) if multi else []
        clean_rows.append(list(clean) + forced)
        corrupt_rows.append(list(corrupt) + forced)
        prompt_lens.append(len(clean))
    clean, mask = pad_rows(clean_rows, padding_side, pad_id)
    corrupt, _ = pad_rows(corrupt_rows, padding_side, pad_id)
    answer_pos = first_real(mask) + torch.tensor(prompt_lens) - 1
    as_set = lambda v: list(v) if isinstance(v, tuple) else list(v[:1])  # noqa: E731
    answers = _pad([as_set(r[2]) for r in rows])
    foils = _pad([as_set(r[3]) for r in rows]) if all(has_foil) else None
    answer_seqs = None if alternatives else _pad([list(r[2]) for r in rows])
    foil_seqs = None if alternatives or not all(has_foil) else _pad([list(r[3]) for r in rows])
    if foil_seqs is not None and not (ok := _same_prefix(answer_seqs, foil_seqs)[1]).all():
        i = int((~ok).nonzero()[0])
        raise TaskError(f"{where[i]}: answer and foil tokenize to {list(rows[i][2])} and {list(rows[i][3])}, which do not "
                        "differ at any token both have (one is a prefix of the other); choose a foil that differs")
    if default_metric is None:
        default_metric = ("seq_logit_diff" if foils is not None else "seq_logprob") if multi else \
            ("logit_diff" if foils is not None else "logprob")
        log.info("task %s: metric %s (answers of %s)", name, default_metric, "several tokens" if multi else "one token")
    return Task(name=name, clean=clean, corrupt=corrupt, answers=answers, foils=foils, answer_pos=answer_pos,
                default_metric=default_metric, info=dict(info or {}), attention_mask=mask, padding_side=PaddingSide(padding_side),
                answer_seqs=answer_seqs, foil_seqs=foil_seqs)


# ---- vocabularies ---------------------------------------------------------------------------
class Vocabulary:
    """Text <-> token ids for a model: its HF tokenizer, or a zoo model's word-level vocabulary."""

    def __init__(self, tokenizer=None, words: Sequence[str] | None = None):
        self.tokenizer, self.words = tokenizer, list(words) if words else None
        self._index = {w: i for i, w in enumerate(self.words)} if self.words else None

    @classmethod
    def of(cls, model: nn.Module) -> Vocabulary:
        words = getattr(getattr(model, "cfg", None), "vocab", None)
        if isinstance(words, (list, tuple)) and words:
            return cls(words=words)
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise TaskError("this model has no tokenizer: give prompts as token id lists, or use a model with one")
        return cls(tokenizer=tok)

    @property
    def size(self) -> int:
        return len(self.words) if self.words else len(self.tokenizer)

    @property
    def bos(self) -> int | None:
        if self.words:
            return self._index.get("<bos>")
        return self.tokenizer.bos_token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (callers add BOS explicitly, once)."""
        if self.words:
            unknown = [w for w in text.split() if w not in self._index]
            if unknown:
                raise TaskError(f"words {unknown[:5]} are not in this model's vocabulary")
            return [self._index[w] for w in text.split()]
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def single(self, text: str, what: str = "answer") -> int:
        ids = self.encode(text)
        if len(ids) != 1:
            shown = [self.decode([i])[0] for i in ids]
            raise TaskError(f"{what} {text!r} is {len(ids)} tokens {shown} under this tokenizer, not one; "
                            "choose a single-token answer (a leading space often helps)")
        return ids[0]

    def word_ids(self, words: Sequence[str], space: bool = True) -> dict[str, int]:
        """{word: id} for the `words` that are one token here: as they are in a word-level vocabulary, after a
        space (unless `space` is False) under a BPE tokenizer. Words that are missing or split are left out."""
        out = {}
        for w in words:
            try:
                ids = self.encode(w if self.words or not space else " " + w)
            except TaskError:
                continue
            if len(ids) == 1:
                out[w] = ids[0]
        return out

    def decode(self, ids: Sequence[int]) -> list[str]:
        if self.words:
            return [self.words[i] for i in ids]
        return [self.tokenizer.decode([i]) for i in ids]


def show_examples(task: Task, vocab: Vocabulary | None, n: int = 3) -> str:
    """A few tokenized examples, for verbose mode."""
    lines = []
    for i in range(min(n, len(task))):
        def fmt(ids):
            return " ".join(f"{t}" for t in (vocab.decode(ids.tolist()) if vocab else ids.tolist()))
        real = task.attention_mask[i]
        lines.append(f"[{i}] clean:   {fmt(task.clean[i][real])}")
        lines.append(f"    corrupt: {fmt(task.corrupt[i][real])}")
        answers, foils = (task.answer_seqs, task.foil_seqs) if task.answer_seqs is not None else (task.answers, task.foils)
        lines.append(f"    answer@{int(task.answer_pos[i])}: {fmt(answers[i][answers[i] >= 0])}"
                     + ("" if foils is None else f"   foil: {fmt(foils[i][foils[i] >= 0])}"))
    return "\n".join(lines)


# ---- user tasks from JSONL and CSV -----------------------------------------------------------
# field -> the key names accepted for it (the field's common spellings; EAP-IG's CSVs use clean, corrupted,
# correct_idx, incorrect_idx). *_idx keys hold token ids; other values are text, or token ids in JSON lists.
FIELD_KEYS = {
    "clean": ("clean",),
    "corrupt": ("corrupt", "corrupted"),
    "answer": ("answer", "answers", "label", "correct_idx"),
    "foil": ("foil", "foils", "incorrect_idx"),
    "metric": ("metric",),
}
REQUIRED_FIELDS = ("clean", "corrupt", "answer")
FILE_SUFFIXES = (".jsonl", ".csv")


def _accepted() -> str:
    return "; ".join(f"{f}: {'/'.join(keys)}" for f, keys in FIELD_KEYS.items())


def _records(path: Path) -> list[tuple[int, dict]]:
    """(line number, {key: value}) for each example of a JSONL or CSV file."""
    text = read_text(path, "task file").removeprefix("\ufeff")
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise TaskError(f"{path}:1: no header row; the first line names the columns ({_accepted()})")
        out = []
        for row in reader:
            if None in row:
                raise TaskError(f"{path}:{reader.line_num}: more cells than header columns; quote cells that hold commas")
            if any(v is None for v in row.values()):
                raise TaskError(f"{path}:{reader.line_num}: fewer cells than header columns ({', '.join(reader.fieldnames)})")
            if any(v.strip() for v in row.values()):
                out.append((reader.line_num, {k.strip(): _csv_value(k.strip(), v) for k, v in row.items()}))
        return out
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line is one JSON object") from e
        if not isinstance(obj, dict):
            raise TaskError(f"{path}:{lineno}: each line must be a JSON object with keys {_accepted()}")
        out.append((lineno, obj))
    return out


def _csv_value(key: str, cell: str):
    """A CSV cell: an integer for *_idx keys, a JSON list when written as one, else the text as is."""
    if key.endswith("_idx") and cell.strip().lstrip("-").isdigit():
        return int(cell)
    if cell.startswith("[") and cell.endswith("]"):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return cell


def _fields(obj: dict, where: str) -> dict:
    """The record's values by field (clean, corrupt, answer, foil, metric) from any accepted key name."""
    out = {}
    for f, keys in FIELD_KEYS.items():
        present = [k for k in keys if k in obj and obj[k] not in (None, "")]
        if len(present) > 1:
            raise TaskError(f"{where}: keys {' and '.join(present)} both give the {f}; keep one")
        if present:
            out[f] = obj[present[0]]
    missing = [f for f in REQUIRED_FIELDS if f not in out]
    if missing:
        raise TaskError(f"{where}: no {' or '.join('/'.join(FIELD_KEYS[f]) for f in missing)} key; accepted keys are "
                        f"{_accepted()} (foil and metric optional); this row has {', '.join(sorted(obj)) or 'none'}")
    return out


def task_from_file(path: str | Path, model: nn.Module | None = None, n_examples: int | None = None,
                   metric: str | None = None, padding_side: PaddingSide | str | None = None) -> Task:
    """A task from a JSONL file (one JSON object per line) or a CSV file (a header row, then one example per row).

    Keys (`FIELD_KEYS`): clean; corrupt/corrupted; answer/answers/label/correct_idx; optional foil/foils/
    incorrect_idx and metric. Values are text (tokenized with the model's tokenizer, no BOS added) or token
    ids (an integer, a JSON list of integers; *_idx keys are ids); a JSON list of texts gives single-token
    alternatives. Prompts may differ in length (padded on `padding_side`, default the model tokenizer's);
    answers may be several tokens (then the sequence metrics apply). `metric` (here, or in the file, the
    same on every row) is a built-in name, a registered name or a module:function path.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    if path.suffix not in FILE_SUFFIXES:
        raise TaskError(f"task file {path}: unknown format {path.suffix or '(no suffix)'}; use .jsonl or .csv")
    vocab = None

    def ids(value, key, where, alternatives_ok=False):
        nonlocal vocab
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise TaskError(f"{where}: {key} holds true/false; write token ids as numbers or text as a string")
        if isinstance(value, list) and not value:
            raise TaskError(f"{where}: {key} is an empty list; give at least one token id")
        if isinstance(value, int) or (isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                                                for v in value)):
            return [value] if isinstance(value, int) else value
        if alternatives_ok and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            out = tuple(i for v in value for i in ids(v, key, where))
            if len(out) != len(value):
                raise TaskError(f"{where}: {key} alternatives {value} must each be one token; give one answer "
                                "(of any length) instead of a list")
            return out
        if not isinstance(value, str) or not value:
            raise TaskError(f"{where}: {key} must be non-empty text or token ids, got {value!r}")
        if model is None:
            raise TaskError(f"{where}: text prompts need a model (for its tokenizer)")
        vocab = vocab or Vocabulary.of(model)
        try:
            out = vocab.encode(value)
        except TaskError as e:
            raise TaskError(f"{where}: {key}: {e}") from e
        if not out:
            raise TaskError(f"{where}: {key} {value!r} is no tokens under this tokenizer")
        return out

    rows, where, metrics = [], [], set()
    for lineno, obj in _records(path):
        here = f"{path}:{lineno}"
        values = _fields(obj, here)
        if "metric" in values:
            metrics.add((str(values["metric"]), here))
        foil = values.get("foil")
        rows.append((ids(values["clean"], "clean", here), ids(values["corrupt"], "corrupt", here),
                     ids(values["answer"], "answer", here, alternatives_ok=True),
                     None if foil is None else ids(foil, "foil", here, alternatives_ok=True)))
        where.append(here)
        if n_examples and len(rows) >= n_examples:
            break
    if not rows:
        raise TaskError(f"{path} holds no examples")
    named = {m for m, _ in metrics}
    if len(named) > 1:
        raise TaskError(f"{sorted(metrics)[1][1]}: metric differs between rows ({', '.join(sorted(named))}); name one metric")
    metric = metric or (named.pop() if named else None)
    side = PaddingSide(padding_side) if padding_side else (padding_side_of(model) if model is not None else PaddingSide.RIGHT)
    return task_from_rows(path.stem, rows, padding_side=side, pad_id=pad_id_of(model) if model is not None else 0,
                          default_metric=metric, info={"source": path.name}, where=where)


def task_from_jsonl(path: str | Path, model: nn.Module | None = None, n_examples: int | None = None,
                    metric: str | None = None) -> Task:
    """`task_from_file` for a .jsonl file (kept for callers of the first API)."""
    return task_from_file(path, model, n_examples, metric)


def text_vocabulary(model: nn.Module, task_name: str, n_examples: int) -> Vocabulary:
    """The vocabulary a built-in text task writes its prompts with; TaskError naming the task if there is none."""
    if n_examples < 1:
        raise TaskError(f"{task_name}: n_examples must be at least 1, got {n_examples}")
    try:
        return Vocabulary.of(model)
    except TaskError as e:
        raise TaskError(f"{task_name} needs text: this model has neither a tokenizer nor a word-level vocabulary") from e


def draw_rows(task_name: str, n_examples: int, draw: Callable[[], tuple | None]) -> list[tuple]:
    """`n_examples` rows from `draw()`, which returns None for a draw it rejects (e.g. a word merged with its
    neighbour under the tokenizer); TaskError if too many draws are rejected."""
    rows = []
    for _ in range(20 * n_examples + 100):
        row = draw()
        if row is not None:
            rows.append(row)
            if len(rows) == n_examples:
                return rows
    raise TaskError(f"{task_name}: could not build clean and corrupted prompts of equal length in this vocabulary")


# ---- loading -------------------------------------------------------------------------------
def builtin_tasks() -> dict[str, str]:
    """Built-in task name -> one-line description."""
    from acdc_lite import tasks

    return tasks.descriptions()


def load_task(name_or_path: str | Path, model: nn.Module, n_examples: int = 64, seed: int = 0,
              metric: str | None = None, check: bool = True, padding_side: PaddingSide | str | None = None) -> Task:
    """A built-in task (see `builtin_tasks()`), a registered task source's (`acdc_lite.registry.TASK_SOURCES`,
    e.g. `tracr-reverse`) or a JSONL or CSV file, built for `model`'s tokenizer or vocabulary. Prompts of
    different lengths are padded on `padding_side` (default: the side the model's tokenizer pads on; right
    for models without one).

    With `check`, token ids are checked against the model's vocabulary and the clean and corrupted
    runs must differ on the metric (otherwise there is nothing to explain).
    """
    from acdc_lite import tasks
    from acdc_lite.registry import TASK_SOURCES, claiming
    from acdc_lite.shape import model_info

    if n_examples < 1:
        raise TaskError(f"n_examples must be at least 1, got {n_examples}")
    registry = tasks.registry()
    name = str(name_or_path)
    source = claiming(TASK_SOURCES, name)
    if source is not None:  # e.g. a compiled tracr program's task, whose model's outputs are not tokens
        try:
            task = source.build(name, model, n_examples=n_examples, seed=seed, metric=metric)
        except (ImportError, KeyError) as e:
            raise TaskError(f"cannot build task {name!r}: {e.args[0]}") from e
        task = _with_reference(task, {"kind": "registered", "given": name, "n_examples": n_examples, "seed": seed,
                                      "metric": metric})
        if check:
            check_signal(model, task)
        return task
    if name in registry:
        task = registry[name].build(model, n_examples=n_examples, seed=seed)
        if metric:
            task = replace(task, default_metric=metric)
        task = _with_reference(task, {"kind": "builtin", "given": name, "n_examples": n_examples, "seed": seed,
                                      "metric": metric})
    elif name.endswith(FILE_SUFFIXES) or Path(name).is_file():
        task = task_from_file(name, model, n_examples, metric, padding_side)
        path = Path(name).expanduser()
        task = _with_reference(task, {"kind": "file", "given": name, "resolved": str(path.resolve()),
                                      "sha256": file_sha256(path), "n_examples": n_examples, "metric": metric})
    else:
        raise TaskError(f"unknown task {name!r}: built-in tasks are {', '.join(registry)}; or give a .jsonl or .csv file")
    if padding_side is not None:
        task = task.with_padding(padding_side, pad_id_of(model))
    if check:
        task.check_vocab(model_info(model).d_vocab)
        check_signal(model, task)
    return task


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes: what a circuit records to know its task file again."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _with_reference(task: Task, reference: dict) -> Task:
    """`task` recording how `load_task` can build it again (a circuit file keeps it under task.reference)."""
    return replace(task, info={**task.info, "reference": reference})


def check_signal(model: nn.Module, task: Task, metric_name: str | None = None) -> tuple[float, float]:
    """Mean metric on clean and corrupted prompts; TaskError if they are equal or not finite."""
    metric = task.metric(metric_name, model=model)
    idx = torch.arange(len(task))
    with torch.no_grad():
        values = [float(metric(task.logits(model, which), idx).mean()) for which in ("clean", "corrupt")]
    clean, corrupt = values
    if not all(map(lambda v: v == v and abs(v) != float("inf"), values)):
        raise TaskError(f"task {task.name!r}: the metric is NaN or infinite on this model (clean {clean}, corrupt {corrupt})")
    if gap_is_zero(clean, corrupt):  # the tolerance every faithfulness uses
        raise TaskError(f"task {task.name!r}: clean and corrupted prompts give the same metric ({clean:.4g}); "
                        "there is nothing to explain. Check that the corruption changes the answer-relevant tokens")
    return clean, corrupt
