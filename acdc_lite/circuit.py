"""`Circuit`: an immutable edge set with scores and provenance, saved as versioned JSON.

File layout (schema_version 2): `schema_version`, `edge_convention`, `model` (name, architecture,
n_layers, n_heads, has_mlp, parallel_attn_mlp, fingerprint), `task`, `method` (name, params),
`ablation`, `edges` (kept edge name -> score), `nodes`, `metrics`, `provenance` (package and torch
version, seed) and optionally `scores` (every edge's score, for rankings) and `roles` (head name -> role
from the head detectors). Scores are signed: higher = more important to the clean behaviour. Nothing
that varies between identical runs (seconds, machine) is in the file: the same inputs, seed and thread
count give the same bytes; a run's cost goes to the run record `run.json` beside it (`acdc_lite.runs`).

Versions: 2 stores scores at full precision (version 1 rounded them to 8 decimals, which tied small scores and
changed rankings); version 1 files still load, as they are.

Grouped-query attention: `model.n_kv_heads` (absent in older files: one k/v head per query head) and,
when heads share k/v inputs, `kv_grouping`, which says how k/v edges are counted: one k and one v receiver
per query head, the k (v) edges from one sender into a group's heads kept or removed together.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from acdc_lite.boundary import MAX_HEADS, MAX_LAYERS, InputError, check_size, expect, read_json_object
from acdc_lite.graph import INPUT_NODE, LOGITS_NODE, Edge, ModelGraph, Node
from acdc_lite.runs import write_atomic

__all__ = ["Circuit", "CircuitError", "ModelRef", "write_atomic"]

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # what `Circuit.load` accepts; files are always written at SCHEMA_VERSION
EDGE_COLUMNS = ("edge", "src", "dst", "port", "src_layer", "dst_layer", "score", "abs_score", "in_circuit")  # to_frame
EDGE_CONVENTION = "eap-ig"  # edges between components; q/k/v-input -> head edges are implicit


class CircuitError(InputError):
    """A circuit file or circuit that cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    architecture: str
    n_layers: int
    n_heads: int
    has_mlp: bool
    parallel_attn_mlp: bool
    fingerprint: str
    d_model: int | None = None  # residual width: exports (EAP-IG / MIB cfg) need it; None in files before it was kept
    n_kv_heads: int | None = None  # k/v heads (grouped-query attention); None: one per query head
    # how to load it again: kind (zoo, local, hub, registered, in-memory), the reference as given, the weight
    # processing and the measured equivalence with its source (see acdc_lite.models.ModelSource); where a model
    # came from is not part of which model it is (shape and fingerprint), so it does not count in ==
    source: dict | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, model: nn.Module) -> ModelRef:
        from acdc_lite.models import fingerprint, model_source
        from acdc_lite.shape import model_info

        i = model_info(model)
        return cls(i.name, i.architecture, i.n_layers, i.n_heads, i.has_mlp, i.parallel_attn_mlp, fingerprint(model), i.d_model,
                   n_kv_heads=i.n_kv_heads, source=model_source(model).to_dict())

    def graph(self) -> ModelGraph:
        return ModelGraph(self.n_layers, self.n_heads, self.has_mlp, self.parallel_attn_mlp, self.n_kv_heads)

    def kv_grouping(self) -> dict | None:
        """How k/v edges are counted when query heads share k/v inputs (None without grouping)."""
        graph = self.graph()
        if graph.kv_group == 1:
            return None
        return {"n_kv_heads": graph.n_kv_heads, "group_size": graph.kv_group,
                "receivers": "per-query-head", "tied": True,
                "rule": "one k and one v receiver per query head; the k (v) edges from one sender into the heads "
                        "of a group are kept or removed together"}


def _clean_float(x: float | None) -> float | None:
    """JSON-safe score at full precision: NaN (not measured) is stored as null."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


@dataclass(frozen=True, repr=False)
class Circuit:
    model: ModelRef
    edges: dict[str, float]  # kept edges -> score
    task: dict = field(default_factory=dict)
    method: dict = field(default_factory=dict)  # {"name": ..., "params": {...}}
    ablation: str = "resample"
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    scores: dict[str, float] | None = None  # every edge's score, when the method produced a ranking
    roles: dict[str, str] = field(default_factory=dict)  # head name -> role (explore.heads detectors), optional
    cost: dict = field(default_factory=dict, compare=False)  # seconds and passes of the search; not saved (see run.json)

    def __post_init__(self):
        graph = self.model.graph()
        known = graph.edge_name_set  # canonical names; any other spelling is parsed
        for name in list(self.edges) + list(self.scores or {}):
            if name in known:
                continue
            try:
                graph.edge_index(name)
            except ValueError as e:
                raise CircuitError(f"circuit edge {name!r} does not exist in a {self.model.n_layers}-layer, "
                                   f"{self.model.n_heads}-head graph of {self.model.name}") from e
        object.__setattr__(self, "edges", {k: _clean_float(v) for k, v in sorted(self.edges.items())})
        if self.scores is not None:
            object.__setattr__(self, "scores", {k: _clean_float(v) for k, v in sorted(self.scores.items())})

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_mask(cls, model_ref: ModelRef, mask: torch.Tensor, scores: torch.Tensor | None = None,
                  keep_all_scores: bool = True, **kwargs) -> Circuit:
        """From a [S, R] membership mask (and optional [S, R] scores) over `model_ref.graph()`."""
        graph = model_ref.graph()
        names = graph.edge_names  # row-major over the valid edges, as mask[valid] and scores[valid] are
        kept = (mask.bool() & graph.valid)[graph.valid].tolist()
        values = scores[graph.valid].tolist() if scores is not None else [1.0] * len(names)
        edges = {name: value for name, value, keep in zip(names, values, kept, strict=True) if keep}
        all_scores = dict(zip(names, values, strict=True)) if scores is not None and keep_all_scores else None
        return cls(model=model_ref, edges=edges, scores=all_scores, **kwargs)

    # ---- views --------------------------------------------------------------------------
    @property
    def graph(self) -> ModelGraph:
        return self.model.graph()

    def edge_list(self) -> list[Edge]:
        return [Edge.parse(n) for n in self.edges]

    @property
    def nodes(self) -> list[str]:
        """Nodes touched by a kept edge, in graph order."""
        touched = {e.src for e in self.edge_list()} | {e.dst for e in self.edge_list()}
        return [str(n) for n in self.graph.nodes if n in touched]

    def heads(self) -> list[Node]:
        return [Node.parse(n) for n in self.nodes if n not in (str(INPUT_NODE), str(LOGITS_NODE)) and n.startswith("a")]

    def mask(self) -> torch.Tensor:
        """[S, R] bool membership over `self.graph`."""
        return self.graph.mask_from_edges(self.edges)

    def score_tensor(self) -> torch.Tensor:
        """[S, R] scores (every edge's if stored, else the kept edges'), NaN where unknown."""
        graph = self.graph
        out = torch.full(graph.valid.shape, float("nan"))
        for name, value in (self.scores or self.edges).items():
            out[graph.edge_index(name)] = float("nan") if value is None else value
        return out

    def with_metrics(self, **metrics) -> Circuit:
        return replace(self, metrics={**self.metrics, **metrics})

    def __repr__(self) -> str:
        faithfulness = self.metrics.get("faithfulness")
        parts = [repr(self.model.name), f"method={self.method.get('name', '?')!r}", f"edges={len(self.edges)}",
                 f"nodes={len(self.nodes)}"]
        if faithfulness is not None:
            parts.append(f"faithfulness={faithfulness:.3f}")
        if self.method.get("metric"):
            parts.append(f"metric={self.method['metric']!r}")
        return f"Circuit({', '.join(parts)})"

    def _repr_svg_(self) -> str | None:
        """The drawing, for notebooks (None, so the text repr shows, when no renderer or graphviz is available)."""
        from acdc_lite.registry import CIRCUIT_RENDERERS

        renderer = CIRCUIT_RENDERERS.get("svg")
        try:
            return None if renderer is None else renderer(self)
        except RuntimeError:  # graphviz's dot missing or failing: fall back to the text repr
            return None

    def to_frame(self):
        """pandas DataFrame, one row per scored edge (every edge if the circuit has a ranking, else the kept ones), best
        |score| first; columns edge, src, dst, port, src_layer, dst_layer, score, abs_score, in_circuit."""
        import pandas as pd

        rows = []
        for name, score in self.score_table().items():
            e = Edge.parse(name)
            s = float("nan") if score is None else float(score)
            rows.append((name, str(e.src), str(e.dst), e.port.value, e.src.layer, e.dst.layer, s, abs(s), name in self.edges))
        frame = pd.DataFrame(rows, columns=list(EDGE_COLUMNS))
        return frame.sort_values(["abs_score", "edge"], ascending=[False, True], na_position="last").reset_index(drop=True)

    def to_networkx(self):
        """networkx MultiDiGraph of the kept edges (edge key = port, attribute score; isolated nodes dropped); model,
        task, method, ablation and metrics in `g.graph`."""
        g = self.graph.to_networkx(self.mask())
        for name, score in self.edges.items():
            e = Edge.parse(name)
            g.edges[str(e.src), str(e.dst), e.port.value]["score"] = float("nan") if score is None else score
        g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
        g.graph.update({"model": asdict(self.model), "task": self.task, "method": self.method, "ablation": self.ablation,
                        "metrics": self.metrics})
        return g

    def score_table(self) -> dict[str, float | None]:
        """Every score the circuit knows: all edges' if it has a ranking, else the kept edges'."""
        return {**(self.scores or {}), **{k: v for k, v in self.edges.items() if k not in (self.scores or {})}}

    # ---- checks -------------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        """Raise CircuitError unless `model` has this circuit's shape and weights."""
        other = ModelRef.of(model)
        if self.model.graph() != other.graph():
            raise CircuitError(f"circuit is for {self.model.name} ({self.model.n_layers} layers x {self.model.n_heads} heads) "
                               f"but the model {other.name} has {other.n_layers} x {other.n_heads}; use the model it was found on")
        if self.model.fingerprint != other.fingerprint:
            raise CircuitError(f"circuit was found on {self.model.name} with weights {self.model.fingerprint}, but these "
                               f"weights are {other.fingerprint}; load the same model (or re-run discovery on this one)")

    # ---- files --------------------------------------------------------------------------
    def to_dict(self, base: str | Path | None = None) -> dict:
        """The file's content; `base` is the directory the file goes to (local paths are written relative to it)."""
        model = asdict(self.model)
        model["source"] = portable_reference(self.model.source, base)
        task = dict(self.task)
        if "reference" in task:
            task["reference"] = portable_reference(task["reference"], base)
        d = {
            "schema_version": SCHEMA_VERSION,
            "edge_convention": EDGE_CONVENTION,
            "model": model,
            "task": task,
            "method": self.method,
            "ablation": self.ablation,
            "n_edges": len(self.edges),
            **({"kv_grouping": self.model.kv_grouping()} if self.model.kv_grouping() else {}),
            "nodes": self.nodes,
            "edges": self.edges,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }
        if self.scores is not None:
            d["scores"] = self.scores
        if self.roles:
            d["roles"] = self.roles
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "circuit") -> Circuit:
        check_circuit_fields(d, source)
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise CircuitError(f"{source} has schema_version {version!r}; this acdc-lite reads versions "
                               f"{', '.join(map(str, READABLE_VERSIONS))}. Use the acdc-lite that wrote it, or re-run discovery")
        if d.get("edge_convention", EDGE_CONVENTION) != EDGE_CONVENTION:
            raise CircuitError(f"{source} uses edge convention {d['edge_convention']!r}, not {EDGE_CONVENTION!r}")
        try:
            return cls(model=ModelRef(**d["model"]), edges=d["edges"], task=d.get("task", {}), method=d.get("method", {}),
                       ablation=d.get("ablation", "resample"), metrics=d.get("metrics", {}),
                       provenance=d.get("provenance", {}), scores=d.get("scores"), roles=d.get("roles") or {})
        except (KeyError, TypeError) as e:
            raise CircuitError(f"{source} is not a circuit file: missing or malformed field {e}") from e
        except CircuitError as e:
            raise CircuitError(f"{source}: {e}") from None

    def to_json(self, base: str | Path | None = None) -> str:
        return json.dumps(self.to_dict(base), indent=1, sort_keys=False, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file + rename): a crash never leaves half a file. Local model and
        task paths are recorded relative to the file's directory (and as given)."""
        path = Path(path)
        write_atomic(path, self.to_json(base=path.parent))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        path = Path(path)
        try:
            d = read_json_object(path, "circuit file")
        except InputError as e:
            raise CircuitError(str(e)) from None
        c = cls.from_dict(d, source=f"circuit file {path}")
        model = replace(c.model, source=located_reference(c.model.source, path.parent))
        task = c.task if not isinstance(c.task.get("reference"), dict) else {
            **c.task, "reference": located_reference(c.task["reference"], path.parent)}
        return replace(c, model=model, task=task)


def portable_reference(ref: dict | None, base: str | Path | None) -> dict | None:
    """A model or task reference as written to a file: the absolute `resolved` path it holds in memory becomes
    `from_circuit`, relative to the file's directory `base` (dropped without one: no machine paths in files)."""
    if not isinstance(ref, dict) or not ({"resolved", "from_circuit"} & set(ref)):
        return ref
    out = {}
    for k, v in ref.items():
        if k == "given" and base is not None and ref.get("resolved"):
            out[k] = v
            out["from_circuit"] = Path(os.path.relpath(ref["resolved"], Path(base).resolve())).as_posix()
        elif k not in ("resolved", "from_circuit"):
            out[k] = v
    return out


def located_reference(ref: dict | None, base: Path) -> dict | None:
    """A reference read from a file in directory `base`: `from_circuit` resolved to an absolute `resolved`."""
    if not isinstance(ref, dict) or not isinstance(ref.get("from_circuit"), str):
        return ref
    return {**ref, "resolved": os.path.normpath(Path(base).resolve() / ref["from_circuit"])}


def check_circuit_fields(d, source: str) -> None:
    """The types and sizes of a circuit file's fields, checked before anything is built from them."""
    try:
        expect(d, dict, f"{source}: the top level", "a circuit file is a JSON object")
        fix = 'write it as an object {"edge name": score, ...}'
        expect(d.get("edges"), dict, f"{source}: field edges", fix)
        for name, value in d["edges"].items():
            if value is not None:
                expect(value, (int, float), f"{source}: edges[{name!r}]", "a score is a number or null")
        if d.get("scores") is not None:
            expect(d["scores"], dict, f"{source}: field scores", 'write it as an object {"edge name": score, ...} or leave it out')
        model = expect(d.get("model"), dict, f"{source}: field model", "it names the model and its shape (n_layers, n_heads, ...)")
        check_size(model.get("n_layers"), MAX_LAYERS, f"{source}: model.n_layers")
        check_size(model.get("n_heads"), MAX_HEADS, f"{source}: model.n_heads")
        for key in ("has_mlp", "parallel_attn_mlp"):
            expect(model.get(key), bool, f"{source}: model.{key}", "write true or false")
        for key in ("name", "architecture", "fingerprint"):
            expect(model.get(key), str, f"{source}: model.{key}", "write a string")
        for key in ("task", "method", "metrics", "provenance", "roles"):
            if key in d:
                expect(d[key], dict, f"{source}: field {key}", "write an object {...}")
    except InputError as e:
        raise CircuitError(str(e)) from None
