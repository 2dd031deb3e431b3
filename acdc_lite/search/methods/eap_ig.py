"""EAP-IG: attribution with integrated gradients from the ablated to the clean input (`search.attribution.eap_ig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from acdc_lite.search.methods._selection import SelectionOptions, select_circuit
from acdc_lite.search.spec import MethodSpec, Runtime


def ig_steps_field(default: int = 5):
    return field(default=default, metadata={"ge": 1, "help": "Integrated-gradient steps (forward and backward passes)."})


@dataclass(frozen=True)
class EAPIGOptions(SelectionOptions):
    """EAP's selection options plus the number of integrated-gradient steps."""

    ig_steps: int = ig_steps_field()


def run(ctx, options: EAPIGOptions, runtime: Runtime):
    from acdc_lite.search import attribution

    return select_circuit(ctx, "eap-ig", attribution.eap_ig(ctx, options.ig_steps), options,
                          {"ig_steps": options.ig_steps})


SPEC = MethodSpec("eap-ig", "integrated-gradient attribution scores, then top-n, threshold or target faithfulness",
                  EAPIGOptions, run, gradient=True)
