"""What a search method is (`MethodSpec`), how its options are built, and the resolved run `Settings`.

Standard library only (options are checked with `boundary.parse_settings` when they are built), so the
CLI can list every method's options without importing torch. The registry of methods is
`acdc_lite.search.methods.METHODS`; this module defines the types it holds.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from enum import Enum
from typing import Any

from acdc_lite.boundary import UsageError


class SearchError(UsageError):
    """Search arguments that cannot work; the message says what to change (a usage error: exit code 2)."""


class Level(str, Enum):
    """What a circuit is made of: edges, or nodes (a node kept keeps all its edges)."""

    EDGE = "edge"
    NODE = "node"


@dataclass(frozen=True)
class Runtime:
    """How a search runs, not what it computes: progress bars and where to checkpoint (a `runs.Checkpointer`)."""

    progress: bool = True
    checkpoint: Any = None


@dataclass(frozen=True)
class MethodSpec:
    """One search method: its options (a frozen dataclass: names, types, ranges in field metadata `ge`/`gt`/`le`,
    defaults, `help`), what it needs, and `run(ctx, options, runtime) -> SearchResult`.

    gradient: it takes gradients of the metric at or near the clean model, so KL (zero gradient there) is refused.
    clean_gradient: its gradients are taken at the clean model only (no path from the ablated input), so any metric
    flat at the clean model (KL, l2 on tracr) scores every edge 0.
    default_metric: the metric when none is given (None: the task's own). tau_share: for a method with a `tau`
    option, the auto tau on a task metric as a share of |m(full) - m(empty)| (on KL it is 0.01 nats).
    candidates: edge sets one patched pass evaluates at once (ACDC's speculative batch, exact's and head pruning's
    batches); prefixed: it keeps a recorded prefix (every chunk's sender differences and residuals) for suffix
    passes. The run function passes `candidates` to the algorithm and the memory plan reads both.
    """

    name: str
    summary: str
    options: type
    run: Callable
    level: Level = Level.EDGE
    gradient: bool = False
    clean_gradient: bool = False
    gqa: bool = True
    checkpointable: bool = False
    default_metric: str | None = None
    tau_share: float | None = None
    candidates: int = 1
    prefixed: bool = False

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.options))

    def defaults(self):
        """The options object with every default."""
        return self.options()

    def help(self, name: str) -> str:
        return next(f.metadata.get("help", "") for f in fields(self.options) if f.name == name)


def option_types(options_cls: type) -> dict[str, tuple[Any, Any, dict]]:
    """name -> (type, default, metadata) of an options dataclass."""
    hints = typing.get_type_hints(options_cls)
    return {f.name: (hints[f.name], f.default if f.default is not MISSING else None, dict(f.metadata))
            for f in fields(options_cls)}


def build_options(spec: MethodSpec, values: dict, source: str, others: dict[str, MethodSpec] | None = None,
                  as_options: bool = False):
    """`spec`'s options object from `values` (None means 'not given'). An option `spec` does not have is a
    SearchError naming the method and the option (and which methods do use it, from `others`); types and ranges
    are checked strictly (`boundary.parse_settings`), then the options' own cross-checks (`__post_init__`)."""
    from acdc_lite.boundary import parse_settings

    given = {k: v for k, v in values.items() if v is not None}
    own = spec.option_names()
    for key in given:
        if key not in own:
            users = [s.name for s in (others or {}).values() if key in s.option_names()]
            label = f"--{key.replace('_', '-')}" if as_options else key
            where = f"it is an option of {', '.join(users)}" if users else "no method has it"
            raise SearchError(f"{spec.name} does not use {label}; {where}. {spec.name}'s options: "
                              f"{', '.join(own) or 'none'}")
    try:
        return parse_settings(spec.options, given, f"{source} ({spec.name})", as_options)
    except UsageError as e:
        raise SearchError(str(e)) from None
    except ValueError as e:  # the options' own cross-checks
        raise SearchError(f"{source} ({spec.name}): {e}") from None


@dataclass(frozen=True)
class Settings:
    """Every setting of one search, decided once at the top of the run and read by the method, the circuit and
    validation. options: the method's options with tau resolved (auto tau already a number); tau_rule says how
    tau was decided (None for a method without tau). executor: what ran the passes ("native-twin": the model's
    verified native twin, see `acdc_lite.twin`; "model": the model itself); how the run ran, not what it computes,
    so it is not in `to_dict` (a circuit records it in its provenance)."""

    method: str
    options: Any
    metric: str
    ablation: str
    seed: int = 0
    batch_size: int = 32
    tau_rule: str | None = None
    executor: str = "model"

    @property
    def params(self) -> dict:
        """The method's options as a JSON-able dict."""
        return asdict(self.options)

    @property
    def tau(self) -> float | None:
        return getattr(self.options, "tau", None)

    def to_dict(self) -> dict:
        """JSON-able: what a circuit file records under `method` (with the ablation and seed beside it)."""
        return {"name": self.method, "params": self.params, "metric": self.metric, "ablation": self.ablation,
                "seed": self.seed, "batch_size": self.batch_size, "tau_rule": self.tau_rule}
