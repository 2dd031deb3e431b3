"""Hybrid: attribution decides what to test together, patching decides, ACDC at the boundary (`search.hybrid`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from acdc_lite.search.methods._tau import tau_field
from acdc_lite.search.methods.eap_ig import ig_steps_field
from acdc_lite.search.spec import MethodSpec, Runtime


@dataclass(frozen=True)
class HybridOptions:
    """The hybrid's options: ACDC's tau and the attribution's integrated-gradient steps."""

    tau: float | None = tau_field()
    ig_steps: int = ig_steps_field(default=4)  # = HybridConfig's (a test holds them equal)
    plain_acdc: bool = field(default=True, metadata={  # = HybridConfig's
        "help": "Run plain ACDC where it is predicted cheaper than the attribution (small graphs)."})


def run(ctx, options: HybridOptions, runtime: Runtime):
    from acdc_lite.search import hybrid

    return hybrid.run(ctx, hybrid.HybridConfig(tau=options.tau, ig_steps=options.ig_steps, batch=SPEC.candidates,
                                               plain_acdc=options.plain_acdc, progress=runtime.progress,
                                               checkpoint=runtime.checkpoint))


SPEC = MethodSpec("hybrid", "attribution-ordered block removal with bisection, then an ACDC sweep at the boundary",
                  HybridOptions, run, gradient=True, checkpointable=True, tau_share=0.02, candidates=8, prefixed=True)
