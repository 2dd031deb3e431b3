"""Exact: every edge's true single-removal effect by patching, then a circuit from those scores."""

from __future__ import annotations

from dataclasses import dataclass

from acdc_lite.search.methods._selection import SelectionOptions, select_circuit
from acdc_lite.search.spec import MethodSpec, Runtime


@dataclass(frozen=True)
class ExactOptions(SelectionOptions):
    """How the circuit is picked from the scores (see `_selection`)."""


def run(ctx, options: ExactOptions, runtime: Runtime):
    from acdc_lite.search import attribution

    scores = attribution.exact(ctx, batch=SPEC.candidates, progress=runtime.progress, checkpoint=runtime.checkpoint)
    return select_circuit(ctx, "exact", scores, options)


SPEC = MethodSpec("exact", "true single-edge removal effects, then selected like eap", ExactOptions, run,
                  checkpointable=True, candidates=16, prefixed=True)
