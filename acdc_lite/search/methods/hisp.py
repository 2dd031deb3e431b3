"""HISP: one-shot head-importance-score ranking (node level, one gradient pass; `search.head_pruning.hisp`)."""

from __future__ import annotations

from dataclasses import dataclass

from acdc_lite.search.methods.head_pruning import HeadPruningOptions
from acdc_lite.search.spec import Level, MethodSpec, Runtime


@dataclass(frozen=True)
class HISPOptions(HeadPruningOptions):
    """HISP's options: head-pruning's (one ranking instead of re-measuring)."""


def run(ctx, options: HISPOptions, runtime: Runtime):
    from acdc_lite.search import head_pruning

    return head_pruning.hisp(ctx, head_pruning.HeadPruningConfig(tau=options.tau, include_mlps=options.include_mlps,
                                                                 progress=runtime.progress))


SPEC = MethodSpec("hisp", "one-shot head-importance-score ranking (node level)", HISPOptions, run, level=Level.NODE,
                  gradient=True, clean_gradient=True, tau_share=0.05)
