"""ACDC: exact edge pruning from the output backwards (see `acdc_lite.search.acdc`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from acdc_lite.search.methods._tau import tau_field
from acdc_lite.search.spec import MethodSpec, Runtime


@dataclass(frozen=True)
class ACDCOptions:
    """ACDC's options: the pruning threshold and the order edges are tested in."""

    tau: float | None = tau_field()
    shuffle_seed: int | None = field(default=None, metadata={
        "help": "Test each receiver's edges in a random order from this seed (default: latest sender first)."})


def run(ctx, options: ACDCOptions, runtime: Runtime):
    from acdc_lite.search import acdc

    return acdc.run(ctx, acdc.ACDCConfig(tau=options.tau, shuffle_seed=options.shuffle_seed, batch=SPEC.candidates,
                                         progress=runtime.progress, checkpoint=runtime.checkpoint))


SPEC = MethodSpec("acdc", "exact ACDC edge pruning with threshold tau (KL to the clean model by default)", ACDCOptions,
                  run, checkpointable=True, default_metric="kl", tau_share=0.02, candidates=8, prefixed=True)
