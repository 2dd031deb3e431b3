"""The method registry: one module per search method, each declaring its options and needs in a `MethodSpec`.

`METHODS` (name -> MethodSpec) is the only definition of a method's options: `search`/`discover`, the CLI's
`discover` options and the config file all build the options object through `options_for`. Adding a method
is one new module here (an options dataclass, `run(ctx, options, runtime)`, `SPEC`) plus its line below.
Importing this package imports no torch (each `run` imports its algorithm when called).
"""

from __future__ import annotations

import typing
from dataclasses import fields

from acdc_lite.search.methods import acdc, eap, eap_ig, exact, head_pruning, hisp, hybrid
from acdc_lite.search.spec import MethodSpec, SearchError, build_options

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    acdc.SPEC,
    head_pruning.SPEC,
    hisp.SPEC,
    eap.SPEC,
    eap_ig.SPEC,
    exact.SPEC,
    hybrid.SPEC,
)}


def get(name: str) -> MethodSpec:
    """The registered method `name`, or a SearchError listing the methods."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise SearchError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def options_for(method: str, values: dict | None = None, source: str = "options", as_options: bool = False):
    """`method`'s options object from `values` (option name -> value; None = not given): an option the method
    does not use, a wrong type or an out-of-range value is a SearchError naming the method and the option."""
    return build_options(get(method), values or {}, source, METHODS, as_options)


def all_options() -> dict[str, dict]:
    """Every option any method has: name -> {"methods": [...], "help": ..., "type": the type hint} (help and type
    from the first method that has it)."""
    out: dict[str, dict] = {}
    for spec in METHODS.values():
        hints = typing.get_type_hints(spec.options)
        for f in fields(spec.options):
            entry = out.setdefault(f.name, {"methods": [], "help": f.metadata.get("help", ""), "type": hints[f.name]})
            entry["methods"].append(spec.name)
    return out


__all__ = ["METHODS", "MethodSpec", "SearchError", "all_options", "get", "options_for"]
