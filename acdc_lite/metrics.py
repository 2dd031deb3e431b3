"""The registry of custom metrics: a name in a task file or on the command line -> a metric factory.

A factory is `factory(task, model or None) -> metric`, and a metric is
`metric(logits [b, pos, vocab], example_indices [b]) -> [b]` (higher = more of the clean behaviour;
read the answer at `task.answer_pos[example_indices]`, never at padded positions). A name resolves to,
in order: a factory registered with `register` in this process, a Python entry point in the group
`acdc_lite.metrics` (installed packages declare `[project.entry-points."acdc_lite.metrics"]`), or a
`module:function` path (e.g. `mypkg.metrics:answer_rank`). The built-in metrics (`logit_diff`, ...) are
not here: `Task.metric` knows them.

A metric may declare the positions it reads (`PositionMetric`): a pass then unembeds only those positions
(`padding.forward(..., positions=...)`), and the metric runs on logits taken there. Built-in metrics declare them; a
plain function (any custom metric) gets the logits at every position.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch

from acdc_lite.padding import take_positions
from acdc_lite.registry import Registry

ENTRY_POINT_GROUP = "acdc_lite.metrics"

METRIC_FACTORIES: Registry[Callable] = Registry("metric")


class MetricNotFound(ValueError):
    """A metric name that no registry entry, entry point or module path provides."""


@dataclass(frozen=True, eq=False)
class PositionMetric:
    """A metric that reads each example's logits only at `positions` [N, T] (e.g. its answer position, and the
    next ones for an answer of several tokens). `at(logits [b, T, vocab] taken there, example indices [b]) -> [b]`;
    called as a plain metric on logits at every position [b, p, vocab], it takes them there itself."""

    positions: torch.Tensor  # [N, T] long, each a real position of its example
    at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric_name: str = ""

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.at(take_positions(logits, self.positions_of(idx)), idx)

    def positions_of(self, idx: torch.Tensor) -> torch.Tensor:
        """[b, T]: the positions read for examples `idx` [b]."""
        return self.positions.to(idx.device)[idx]

    def on_rows(self, rows: torch.Tensor) -> PositionMetric:
        """The metric of a subset: example i of the subset is example rows[i] here."""
        return PositionMetric(self.positions[rows], lambda logits, idx: self.at(logits, rows.to(idx.device)[idx]),
                              self.metric_name)


def on_rows(metric: Callable, rows: torch.Tensor) -> Callable:
    """`metric` for a subset of the examples (example i of the subset is example rows[i]); a PositionMetric stays one."""
    if isinstance(metric, PositionMetric):
        return metric.on_rows(rows)
    return lambda logits, idx: metric(logits, rows.to(idx.device)[idx])


def register(name: str, factory: Callable) -> None:
    """Make `name` resolve to `factory(task, model) -> metric` in this process."""
    if not callable(factory):
        raise TypeError(f"metric {name!r}: the factory must be callable")
    METRIC_FACTORIES.register(name, factory, replace=True)


def registered() -> list[str]:
    """Names registered in this process or declared as entry points."""
    return sorted(set(METRIC_FACTORIES.names()) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def resolve(name: str) -> Callable:
    """The factory for `name`; MetricNotFound saying where it was looked for and how to provide it."""
    if name in METRIC_FACTORIES:
        return METRIC_FACTORIES[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                factory = ep.load()
            except Exception as e:  # a broken plugin: say which and why
                raise MetricNotFound(f"metric {name!r}: entry point {ep.value!r} fails to load ({type(e).__name__}: {e})") from e
            return _checked(name, factory)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise MetricNotFound(f"metric {name!r}: cannot import module {module_name!r} ({e}); check the "
                                 "module:function path and that the module is importable (on PYTHONPATH)") from e
        if not hasattr(module, attr):
            raise MetricNotFound(f"metric {name!r}: module {module_name!r} has no attribute {attr!r}")
        return _checked(name, getattr(module, attr))
    raise MetricNotFound(f"unknown metric {name!r}: not built in, not registered, not an entry point in group "
                         f"{ENTRY_POINT_GROUP!r}; name a built-in metric or give a factory as module:function "
                         "(e.g. mypkg.metrics:my_metric)")


def _checked(name: str, factory) -> Callable:
    if not callable(factory):
        raise MetricNotFound(f"metric {name!r} resolves to a {type(factory).__name__}, not a callable factory")
    return factory
