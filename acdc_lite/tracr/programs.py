"""The registered program suite (`PROGRAMS`) and the by-name sources: `load_model("tracr-reverse")`,
`load_task("tracr-reverse", model)`."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

from acdc_lite.registry import MODEL_SOURCES, TASK_SOURCES, ModelSource, TaskSource
from acdc_lite.task import Task, TaskError
from acdc_lite.tracr.compile import compile_program
from acdc_lite.tracr.program import TracrProgram, rasp_module
from acdc_lite.transformer import SmallTransformer


@dataclass(frozen=True)
class ProgramSpec:
    """A registered program: a builder of a fresh RASP program and how to compile it and make tasks."""

    build: Callable  # rasp module -> SOp
    vocab: tuple
    max_seq_len: int
    seq_len: int
    unique_inputs: bool
    default_examples: int
    description: str


def _reverse(rasp):
    """ACDC's tracr-reverse: length via selector width, opp_idx = length - indices - 1, aggregate tokens."""
    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all_true")).named("length")
    opp_idx = (length - rasp.indices).named("opp_idx")
    opp_idx = (opp_idx - 1).named("opp_idx-1")
    flip = rasp.Select(rasp.indices, opp_idx, rasp.Comparison.EQ).named("flip")
    return rasp.Aggregate(flip, rasp.tokens).named("reverse")


def _frac_prevs(rasp, token: str = "x", name: str = "frac_prevs"):
    """Fraction of the tokens so far equal to `token` (numerical mean over indices <= own index)."""
    is_token = rasp.numerical(rasp.Map(lambda t: t == token, rasp.tokens).named(f"is_{token}"))
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    return rasp.numerical(rasp.Aggregate(prevs, is_token, default=0)).named(name)


def _proportion(rasp):
    """ACDC's tracr-proportion: make_frac_prevs(tokens == 'x')."""
    return _frac_prevs(rasp, "x")


def _sort(rasp, max_seq_len: int = 4, min_key: float = 1):
    """Sort tokens (repeats allowed): unique keys token + i / max_seq_len (MLP), target position by
    selector width (head + MLP), then each position fetches the token whose target it is (head)."""
    keys = rasp.SequenceMap(lambda x, i: x + min_key * i / max_seq_len, rasp.tokens, rasp.indices).named("sort_keys")
    smaller = rasp.Select(keys, keys, rasp.Comparison.LT).named("smaller")
    target_pos = rasp.SelectorWidth(smaller).named("target_pos")
    fetch = rasp.Select(target_pos, rasp.indices, rasp.Comparison.EQ).named("fetch")
    return rasp.Aggregate(fetch, rasp.tokens).named("sort")


def _hist(rasp):
    """How often each position's token occurs in the input (selector width of token equality)."""
    return rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_tok")).named("hist")


def _shifted(rasp, offset: int):
    """The token `offset` positions back (BOS's default, a zero vector, before that)."""
    sel = rasp.Select(rasp.indices, rasp.indices, lambda k, q: q == k + offset).named(f"back{offset}")
    return rasp.Aggregate(sel, rasp.tokens).named(f"tok_back{offset}")


def _pattern(rasp):
    """Whether the last three tokens are a b c: two shift heads in one layer, then two MLP stages."""
    ab = rasp.SequenceMap(lambda x, y: x == "a" and y == "b", _shifted(rasp, 2), _shifted(rasp, 1)).named("ab_before")
    return rasp.SequenceMap(lambda p, t: bool(p) and t == "c", ab, rasp.tokens).named("pattern_abc")


def _balance(rasp):
    """Fraction of '(' minus fraction of ')' so far: two token MLPs, two numerical heads, a linear MLP."""
    opens = _frac_prevs(rasp, "(", "frac_open")
    closes = _frac_prevs(rasp, ")", "frac_close")
    return rasp.numerical(rasp.LinearSequenceMap(opens, closes, 1, -1)).named("balance")


PROGRAMS: dict[str, ProgramSpec] = {
    "reverse": ProgramSpec(_reverse, (1, 2, 3), 5, 3, True, 6, _reverse.__doc__),
    "proportion": ProgramSpec(_proportion, ("w", "x", "y", "z"), 5, 4, False, 50, _proportion.__doc__),
    "sort": ProgramSpec(_sort, (1, 2, 3), 4, 4, False, 50, _sort.__doc__),
    "hist": ProgramSpec(_hist, ("a", "b", "c"), 5, 4, False, 50, _hist.__doc__),
    "pattern": ProgramSpec(_pattern, ("a", "b", "c"), 5, 4, False, 50, _pattern.__doc__),
    "balance": ProgramSpec(_balance, ("(", ")", "a"), 5, 4, False, 50, _balance.__doc__),
}


def load_program(name: str) -> TracrProgram:
    """Compile a registered program (see `PROGRAMS`)."""
    if name not in PROGRAMS:
        raise KeyError(f"unknown tracr program {name!r}; registered: {', '.join(PROGRAMS)}")
    spec = PROGRAMS[name]
    return compile_program(spec.build(rasp_module()), set(spec.vocab), spec.max_seq_len, name=name, seq_len=spec.seq_len,
                           unique_inputs=spec.unique_inputs, default_examples=spec.default_examples)



# ---- by name: load_model("tracr-reverse"), load_task("tracr-reverse", model) ---------------------------
PREFIX = "tracr-"


def program_name(name: str) -> str:
    """'tracr-reverse' (or 'reverse') -> 'reverse'; KeyError listing the registered names otherwise."""
    program = str(name).removeprefix(PREFIX)
    if program not in PROGRAMS:
        raise KeyError(f"unknown tracr program {name!r}; registered: {', '.join(PREFIX + p for p in PROGRAMS)}")
    return program


@functools.cache
def _compiled(program: str) -> TracrProgram:
    return load_program(program)


def program_by_name(name: str) -> TracrProgram:
    """The registered program `name` ('tracr-reverse' or 'reverse'), compiled once per process.

    TracrUnavailable (an ImportError) without tracr, KeyError for an unknown name. The program is shared
    between callers: do not modify its model (`model_by_name` hands out copies).
    """
    rasp_module()  # a clear error without tracr, even when the program is cached
    return _compiled(program_name(name))


def model_by_name(name: str) -> SmallTransformer:
    """A copy of the registered program's converted model (the program is compiled once per process)."""
    return copy.deepcopy(program_by_name(name).model)


def task_by_name(name: str, model, n_examples: int | None = None, seed: int = 0, metric: str | None = None) -> Task:
    """The registered program's task for `model` (which must be that program's model, from `load_model(name)`).

    n_examples: distinct inputs, at most every input of the task length (default: the program's own count,
    e.g. the 6 permutations for reverse). metric: the task's default metric (default l2).
    """
    prog = program_by_name(name)
    got = getattr(getattr(model, "cfg", None), "name", None)
    if got != prog.model.cfg.name:
        raise TaskError(f"task {PREFIX + prog.name!r} runs on its compiled program: load the model with "
                        f"load_model({PREFIX + prog.name!r}) (got model {got or type(model).__name__!r})")
    n = min(n_examples or prog.default_examples, len(prog.all_inputs()))
    task = prog.make_task(n, seed=seed)
    return replace(task, default_metric=metric) if metric else task


def _claims(name: str) -> bool:
    return str(name).startswith(PREFIX)


def _names() -> list[str]:
    return [PREFIX + p for p in PROGRAMS]


MODEL_SOURCE = ModelSource("tracr", _claims, model_by_name, _names)
TASK_SOURCE = TaskSource("tracr", _claims, task_by_name, _names)


def register() -> None:
    """Make `load_model("tracr-<program>")` and `load_task("tracr-<program>", model)` find this module's programs
    (called by the package's plugin hook; see `acdc_lite.registry`)."""
    MODEL_SOURCES.register(MODEL_SOURCE.name, MODEL_SOURCE)
    TASK_SOURCES.register(TASK_SOURCE.name, TASK_SOURCE)
