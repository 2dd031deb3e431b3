"""EAP: edge attribution patching, one gradient pass, then a circuit from the scores (`search.attribution.eap`)."""

from __future__ import annotations

from dataclasses import dataclass

from acdc_lite.search.methods._selection import SelectionOptions, select_circuit
from acdc_lite.search.spec import MethodSpec, Runtime


@dataclass(frozen=True)
class EAPOptions(SelectionOptions):
    """How the circuit is picked from the scores (see `_selection`)."""


def run(ctx, options: EAPOptions, runtime: Runtime):
    from acdc_lite.search import attribution

    return select_circuit(ctx, "eap", attribution.eap(ctx), options)


SPEC = MethodSpec("eap", "attribution scores from one gradient pass, then top-n, threshold or target faithfulness",
                  EAPOptions, run, gradient=True, clean_gradient=True)
