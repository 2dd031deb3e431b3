"""Task variables: what each example of a task encodes, one integer label per example (a registry).

`answer`: the answer token (the token to be copied, for induction); `carry`: 1 when the operands' units digits
sum to 10 or more (addition tasks, from `task.info["operands"]`); `foil`: the foil token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from acdc_lite.boundary import UsageError
from acdc_lite.task import Task

VARIABLES: dict[str, tuple[Callable[[Task], torch.Tensor], str]] = {}


def register(name: str, description: str):
    def add(fn: Callable[[Task], torch.Tensor]):
        VARIABLES[name] = (fn, description)
        return fn
    return add


def labels(task: Task, name: str) -> torch.Tensor:
    """[N] integer labels of variable `name` on `task`; ValueError naming the choices or what the task lacks."""
    if name not in VARIABLES:
        raise UsageError(f"unknown variable {name!r}; choose one of {', '.join(sorted(VARIABLES))}")
    return VARIABLES[name][0](task)


@register("answer", "the answer token id (induction: the token to be copied)")
def _answer(task: Task) -> torch.Tensor:
    return task.answers[:, 0].clone()


@register("foil", "the foil token id")
def _foil(task: Task) -> torch.Tensor:
    if task.foils is None:
        raise UsageError(f"variable foil: task {task.name!r} has no foils")
    return task.foils[:, 0].clone()


@register("carry", "1 when the operands' units digits sum to 10 or more (addition)")
def _carry(task: Task) -> torch.Tensor:
    ops = task.info.get("operands")
    if not ops or len(ops) != len(task):
        raise UsageError(f"variable carry needs the operands of each example (task.info['operands'], as the addition "
                         f"task records); task {task.name!r} has none")
    return torch.tensor([int(a % 10 + b % 10 >= 10) for a, b in ops])
