"""Iterative head pruning: node level, each node's exact effect re-measured as nodes go (`search.head_pruning`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from acdc_lite.search.methods._tau import tau_field
from acdc_lite.search.spec import Level, MethodSpec, Runtime


@dataclass(frozen=True)
class HeadPruningOptions:
    """Iterative pruning's options: how far below the full model the metric may fall, and whether MLPs go too."""

    tau: float | None = tau_field()
    include_mlps: bool = field(default=False, metadata={"help": "Prune MLPs as well as attention heads."})


def run(ctx, options: HeadPruningOptions, runtime: Runtime):
    from acdc_lite.search import head_pruning

    return head_pruning.run(ctx, head_pruning.HeadPruningConfig(tau=options.tau, include_mlps=options.include_mlps,
                                                                batch=SPEC.candidates, progress=runtime.progress,
                                                                checkpoint=runtime.checkpoint))


SPEC = MethodSpec("head-pruning", "iterative node pruning, exact effects re-estimated as nodes go", HeadPruningOptions,
                  run, level=Level.NODE, checkpointable=True, tau_share=0.05, candidates=16)
