"""Circuits to and from other tools' formats, by name (`FORMATS`, `export_circuit`, `import_circuit`).

| name | tool | lossless | module |
|---|---|---|---|
| eap-json | EAP-IG / MIB `Graph.to_json` / `from_json` | yes | eap |
| eap-pt | EAP-IG / MIB `Graph.to_pt` / `from_pt` | yes | eap |
| mib | MIB circuit-track submission folder | export only | mib |
| auto-circuit | auto-circuit PruneScores (safetensors) | scores only | autocircuit |
| circuit-tracer | circuit-tracer viewer graph JSON | export only | circuit_tracer |
| safetensors | our [sender, receiver] score and membership matrices | yes | tables |
| graphml | GraphML (networkx, Gephi, yEd, Cytoscape) | yes | tables |
| csv | one row per scored edge | yes | tables |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from acdc_lite.circuit import Circuit, CircuitError
from acdc_lite.interop.autocircuit import from_autocircuit, from_prune_scores, to_autocircuit, to_prune_scores
from acdc_lite.interop.circuit_tracer import to_circuit_tracer, to_graph_json
from acdc_lite.interop.eap import from_eap_json, from_eap_pt, to_eap_json, to_eap_pt
from acdc_lite.interop.mib import MIB_MODELS, MIB_TASKS, export_mib
from acdc_lite.interop.tables import (
    EDGE_COLUMNS,
    circuit_from_nodes,
    edges_frame,
    from_csv,
    from_dot,
    from_frame,
    from_graphml,
    from_networkx,
    from_safetensors,
    to_csv,
    to_dot,
    to_graphml,
    to_networkx,
    to_safetensors,
)


@dataclass(frozen=True)
class Format:
    """An exchange format: `write(circuit, path, **options)`, `read(path, **options)` (None: export only)."""

    name: str
    description: str
    lossless: bool
    write: Callable[..., object]
    read: Callable[..., Circuit] | None
    suffix: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("eap-json", "EAP-IG / MIB graph JSON (Graph.from_json)", True, to_eap_json, from_eap_json, ".json"),
    Format("eap-pt", "EAP-IG / MIB graph tensors (Graph.from_pt), read with weights_only", True, to_eap_pt, from_eap_pt, ".pt"),
    Format("mib", "MIB circuit-track submission folder {task}_{model}/importances.json", False, export_mib, None, ""),
    Format("auto-circuit", "auto-circuit PruneScores {module: tensor} as safetensors", False, to_autocircuit, from_autocircuit,
           ".safetensors"),
    Format("circuit-tracer", "circuit-tracer viewer graph JSON (nodes, links, metadata)", False, to_circuit_tracer, None, ".json"),
    Format("safetensors", "[sender, receiver] scores and membership, header as metadata", True, to_safetensors,
           from_safetensors, ".safetensors"),
    Format("graphml", "GraphML of every scored edge", True, to_graphml, from_graphml, ".graphml"),
    Format("csv", "one row per scored edge, header comment line", True, to_csv, from_csv, ".csv"),
)}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise CircuitError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def export_circuit(circuit: Circuit, path: str | Path, fmt: str, **options):
    """Write `circuit` to `path` in format `fmt` (see `FORMATS`); returns what the writer returns."""
    return get_format(fmt).write(circuit, Path(path), **options)


def import_circuit(path: str | Path, fmt: str, **options) -> Circuit:
    """Read a circuit written in format `fmt`; CircuitError for export-only formats."""
    f = get_format(fmt)
    if f.read is None:
        raise CircuitError(f"{fmt} is an export-only format (it drops what a circuit needs); import one of "
                           f"{', '.join(n for n, g in FORMATS.items() if g.read is not None)}")
    return f.read(Path(path), **options)


__all__ = [
    "EDGE_COLUMNS", "FORMATS", "Format", "MIB_MODELS", "MIB_TASKS", "circuit_from_nodes", "edges_frame", "export_circuit",
    "export_mib", "from_autocircuit", "from_csv", "from_dot", "from_eap_json", "from_eap_pt", "from_frame", "from_graphml",
    "from_networkx", "from_prune_scores", "from_safetensors", "get_format", "import_circuit", "to_autocircuit", "to_circuit_tracer",
    "to_csv", "to_dot", "to_eap_json", "to_eap_pt", "to_graph_json", "to_graphml", "to_networkx", "to_prune_scores",
    "to_safetensors",
]
