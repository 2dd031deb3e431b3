"""The `tau` option shared by the pruning methods (acdc, head-pruning, hisp, hybrid)."""

from __future__ import annotations

from dataclasses import field

TAU_HELP = ("Pruning threshold in metric units: acdc and hybrid remove edges that cost less than tau, head-pruning "
            "and hisp keep the metric within tau of the full model's (default: 0.01 on KL, else a share of "
            "|m(full) - m(empty)|, decided once before the search).")


def tau_field():
    """A `tau: float | None` dataclass field (None: decided from the model before the search)."""
    return field(default=None, metadata={"ge": 0, "help": TAU_HELP})
