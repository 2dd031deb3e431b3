"""`Task`: clean and corrupted prompts, answer (and foil) tokens, and metrics. Never loads a model.

Sign convention, for every metric: higher = more of the clean behaviour. Metrics are per example:
`metric(logits [b, pos, vocab], example_indices [b]) -> [b]`; searches average them. A task may add
its own metrics (e.g. over every position, for tracr programs) in `custom_metrics`: name ->
factory `(task, model or None) -> metric`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from acdc_lite.boundary import read_text

log = logging.getLogger(__name__)

METRICS = ("logit_diff", "prob_diff", "logprob", "kl", "accuracy")


class TaskError(ValueError):
    """Bad task input; the message names the example or line and the fix."""


def _pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


@dataclass(frozen=True)
class Task:
    """N examples of P tokens each; answers/foils are [N, K] id sets padded with -1."""

    name: str
    clean: torch.Tensor  # [N, P]
    corrupt: torch.Tensor  # [N, P]
    answers: torch.Tensor  # [N, K]
    foils: torch.Tensor | None = None  # [N, K']
    answer_pos: torch.Tensor | None = None  # [N], default: last position
    default_metric: str = "logit_diff"
    info: dict = field(default_factory=dict)  # templates, seed, ... (goes into circuit files)
    custom_metrics: dict[str, Callable] = field(default_factory=dict, compare=False, repr=False)  # name -> factory(task, model)

    def __post_init__(self):
        n = len(self.clean)
        if n == 0:
            raise TaskError(f"task {self.name!r} has no examples; give at least one clean/corrupt pair")
        if self.clean.dim() != 2 or self.corrupt.shape != self.clean.shape:
            bad = self.clean.shape, self.corrupt.shape
            raise TaskError(f"task {self.name!r}: clean {tuple(bad[0])} and corrupt {tuple(bad[1])} prompts must have the "
                            "same [examples, tokens] shape")
        for label, t in (("answers", self.answers), ("foils", self.foils)):
            if t is not None and (t.dim() != 2 or len(t) != n or not (t[:, 0] >= 0).all()):
                raise TaskError(f"task {self.name!r}: {label} must hold at least one token id for each of the {n} examples")
        if self.answer_pos is None:
            object.__setattr__(self, "answer_pos", torch.full((n,), self.clean.shape[1] - 1, dtype=torch.long))
        if self.default_metric not in self.metric_names:
            raise TaskError(f"unknown metric {self.default_metric!r}; choose one of {', '.join(self.metric_names)}")

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def seq_len(self) -> int:
        return self.clean.shape[1]

    def check_vocab(self, d_vocab: int) -> None:
        """Raise TaskError naming the first example with a token id outside [0, d_vocab)."""
        for label, t in (("clean", self.clean), ("corrupt", self.corrupt), ("answers", self.answers), ("foils", self.foils)):
            if t is None:
                continue
            bad = ((t >= d_vocab) | (t < -1) | ((t < 0) & (label in ("clean", "corrupt")))).any(dim=1).nonzero()
            if len(bad):
                i = int(bad[0])
                raise TaskError(f"task {self.name!r}, example {i}: {label} token ids {t[i].tolist()} fall outside the "
                                f"model's vocabulary of {d_vocab}; build the task with this model's tokenizer")

    def subset(self, idx: torch.Tensor) -> Task:
        """The examples at `idx` (e.g. a bootstrap resample)."""
        return replace(self, clean=self.clean[idx], corrupt=self.corrupt[idx], answers=self.answers[idx],
                       foils=None if self.foils is None else self.foils[idx], answer_pos=self.answer_pos[idx])

    def describe(self) -> dict:
        """What a circuit file records of its task: name, sizes, metric and the task's settings. Per-example
        lists in `info` (one entry per prompt) stay out, so a file does not grow with n_examples."""
        settings = {k: v for k, v in self.info.items() if not (isinstance(v, (list, tuple)) and len(v) == len(self) > 2)}
        return {"name": self.name, "n_examples": len(self), "seq_len": self.seq_len, "metric": self.default_metric, **settings}

    # ---- metrics ------------------------------------------------------------------------
    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRICS + tuple(self.custom_metrics)

    def metric(self, name: str | None = None, model: nn.Module | None = None) -> Callable:
        """A per-example metric (higher = more clean behaviour). `kl` needs the model (for clean logits)."""
        name = name or self.default_metric
        if name in self.custom_metrics:
            custom = self.custom_metrics[name](self, model)
            custom.metric_name = name
            return custom
        if name not in METRICS:
            raise TaskError(f"unknown metric {name!r}; choose one of {', '.join(self.metric_names)}")
        if name in ("logit_diff", "prob_diff") and self.foils is None:
            raise TaskError(f"metric {name} needs foil tokens, and task {self.name!r} has none; use logprob or kl")
        answers, foils, pos = self.answers, self.foils, self.answer_pos

        def at_answer(logits, idx):
            return logits[torch.arange(len(idx), device=logits.device), pos.to(logits.device)[idx]]  # [b, vocab]

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
            def metric(logits, idx):
                x = at_answer(logits, idx)
                return mean_over(x, dev(answers, x)[idx]) - mean_over(x, dev(foils, x)[idx])
        elif name == "prob_diff":
            def metric(logits, idx):
                p = at_answer(logits, idx).softmax(-1)
                return sum_over(p, dev(answers, p)[idx]) - sum_over(p, dev(foils, p)[idx])
        elif name == "logprob":
            def metric(logits, idx):
                lp = at_answer(logits, idx).log_softmax(-1)
                return torch.logsumexp(lp.gather(1, dev(answers, lp)[idx].clamp(min=0))
                                       .masked_fill(dev(answers, lp)[idx] < 0, float("-inf")), dim=1)
        elif name == "accuracy":
            def metric(logits, idx):
                top = at_answer(logits, idx).argmax(-1, keepdim=True)
                return (top == dev(answers, top)[idx]).any(1).float()
        else:  # kl: minus KL(clean || patched) at the answer position
            if model is None:
                raise TaskError("the kl metric needs the model, to compute the clean distribution")
            with torch.no_grad():
                clean_lp = torch.cat([model(self.clean[i:i + 64])[torch.arange(len(self.clean[i:i + 64])),
                                                                  self.answer_pos[i:i + 64]].log_softmax(-1)
                                      for i in range(0, len(self), 64)])

            def metric(logits, idx):
                lp = at_answer(logits, idx).log_softmax(-1)
                ref = dev(clean_lp, lp)[idx]
                return -(ref.exp() * (ref - lp)).sum(-1)
        metric.metric_name = name
        return metric


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
        lines.append(f"[{i}] clean:   {fmt(task.clean[i])}")
        lines.append(f"    corrupt: {fmt(task.corrupt[i])}")
        ans = task.answers[i][task.answers[i] >= 0]
        lines.append(f"    answer@{int(task.answer_pos[i])}: {fmt(ans)}"
                     + ("" if task.foils is None else f"   foil: {fmt(task.foils[i][task.foils[i] >= 0])}"))
    return "\n".join(lines)


# ---- user tasks from JSONL ------------------------------------------------------------------
def task_from_jsonl(path: str | Path, model: nn.Module | None = None, n_examples: int | None = None,
                    metric: str | None = None) -> Task:
    """One JSON object per line: `clean`, `corrupt`, `answer`, optional `foil`; each text or token ids."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    vocab = None
    rows = []
    for lineno, line in enumerate(read_text(path, "task file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not {"clean", "corrupt", "answer"} <= set(obj):
            raise TaskError(f"{path}:{lineno}: each line needs an object with clean, corrupt and answer (optional foil)")

        def ids(value, key, single=False, lineno=lineno):
            nonlocal vocab
            if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
                raise TaskError(f"{path}:{lineno}: {key} holds true/false; write token ids as numbers or text as a string")
            if isinstance(value, list) and not value:
                raise TaskError(f"{path}:{lineno}: {key} is an empty list; give at least one token id")
            if isinstance(value, int) or (isinstance(value, list) and all(isinstance(v, int) for v in value)):
                v = [value] if isinstance(value, int) else value
                if single and len(v) != 1:
                    raise TaskError(f"{path}:{lineno}: {key} must be one token id, got {len(v)}")
                return v
            if not isinstance(value, str):
                raise TaskError(f"{path}:{lineno}: {key} must be text or token ids")
            if model is None:
                raise TaskError(f"{path}:{lineno}: text prompts need a model (for its tokenizer)")
            vocab = vocab or Vocabulary.of(model)
            try:
                return [vocab.single(value, key)] if single else vocab.encode(value)
            except TaskError as e:
                raise TaskError(f"{path}:{lineno}: {e}") from e

        clean, corrupt = ids(obj["clean"], "clean"), ids(obj["corrupt"], "corrupt")
        if len(clean) != len(corrupt):
            raise TaskError(f"{path}:{lineno}: clean is {len(clean)} tokens but corrupt is {len(corrupt)}; "
                            "they must tokenize to the same length")
        answer = ids(obj["answer"], "answer", single=True)
        foil = ids(obj["foil"], "foil", single=True) if "foil" in obj else None
        rows.append((lineno, clean, corrupt, answer, foil))
        if n_examples and len(rows) >= n_examples:
            break
    if not rows:
        raise TaskError(f"{path} holds no examples")
    lengths = {len(r[1]) for r in rows}
    if len(lengths) > 1:
        first = next(r for r in rows if len(r[1]) != len(rows[0][1]))
        raise TaskError(f"{path}:{first[0]}: prompt is {len(first[1])} tokens but line {rows[0][0]} is {len(rows[0][1])}; "
                        "all prompts in a task must have the same length (padding is not supported)")
    has_foil = [r[4] is not None for r in rows]
    if any(has_foil) and not all(has_foil):
        raise TaskError(f"{path}:{rows[has_foil.index(False)][0]}: foil missing; give a foil on every line or on none")
    return Task(
        name=path.stem,
        clean=torch.tensor([r[1] for r in rows]),
        corrupt=torch.tensor([r[2] for r in rows]),
        answers=_pad([r[3] for r in rows]),
        foils=_pad([r[4] for r in rows]) if all(has_foil) else None,
        default_metric=metric or ("logit_diff" if all(has_foil) else "logprob"),
        info={"source": path.name},
    )


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

    return {name: mod.DESCRIPTION for name, mod in tasks.registry().items()}


def load_task(name_or_path: str | Path, model: nn.Module, n_examples: int = 64, seed: int = 0,
              metric: str | None = None, check: bool = True) -> Task:
    """A built-in task (see `builtin_tasks()`), a registered task source's (`acdc_lite.registry.TASK_SOURCES`,
    e.g. `tracr-reverse`) or a JSONL file, built
    for `model`'s tokenizer or vocabulary.

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
    elif name.endswith(".jsonl") or Path(name).is_file():
        task = task_from_jsonl(name, model, n_examples, metric)
        path = Path(name).expanduser()
        task = _with_reference(task, {"kind": "file", "given": name, "resolved": str(path.resolve()),
                                      "sha256": file_sha256(path), "n_examples": n_examples, "metric": metric})
    else:
        raise TaskError(f"unknown task {name!r}: built-in tasks are {', '.join(registry)}; or give a .jsonl file")
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
        values = [float(torch.cat([metric(model(t[i:i + 64]), idx[i:i + 64]) for i in range(0, len(task), 64)]).mean())
                  for t in (task.clean, task.corrupt)]
    clean, corrupt = values
    if not all(map(lambda v: v == v and abs(v) != float("inf"), values)):
        raise TaskError(f"task {task.name!r}: the metric is NaN or infinite on this model (clean {clean}, corrupt {corrupt})")
    if abs(clean - corrupt) < 1e-6:
        raise TaskError(f"task {task.name!r}: clean and corrupted prompts give the same metric ({clean:.4g}); "
                        "there is nothing to explain. Check that the corruption changes the answer-relevant tokens")
    return clean, corrupt
