"""The package's layers and its import graph: imports only go down, and there is no cycle.

`python -m acdc_lite.layers` prints every module by layer with what it imports, then any import that goes up
a layer and any cycle (exit code 1 if there is one). Module-level and function-level imports both count.
Standard library only; it reads the source and imports nothing.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

# Lowest first. A module takes the layer of its longest listed prefix (`acdc_lite` itself: only the package's
# __init__); modules not listed are applications (layer "apps"): they may import everything below the CLI.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaves", ("acdc_lite.choices", "acdc_lite.lazy", "acdc_lite.hooks", "acdc_lite.registry", "acdc_lite.layers",
                "acdc_lite.transformer", "acdc_lite.padding",
                "acdc_lite.faithfulness",
                "acdc_lite.metrics", "acdc_lite.boundary", "acdc_lite.runs", "acdc_lite.offload",
                "acdc_lite.suffix")),
    ("shape", ("acdc_lite.shape",)),
    ("models, task", ("acdc_lite.models", "acdc_lite.task", "acdc_lite.zoo", "acdc_lite.twin")),
    ("graph", ("acdc_lite.graph",)),
    ("ranking", ("acdc_lite.ranking",)),
    ("patching", ("acdc_lite.patching", "acdc_lite.incremental")),
    ("circuit", ("acdc_lite.circuit",)),
    ("search", ("acdc_lite.search",)),
    ("validate", ("acdc_lite.validate",)),
    ("apps", ("acdc_lite.zoo.data", "acdc_lite.zoo.measure", "acdc_lite.zoo.train")),
    ("cli", ("acdc_lite.cli", "acdc_lite.__main__", "acdc_lite")),
)
DEFAULT_LAYER = "apps"
LAYER_NAMES = tuple(name for name, _ in LAYERS)


@dataclass(frozen=True)
class ImportGraph:
    """modules: module -> the package modules it imports; layers: module -> layer index."""

    modules: dict[str, frozenset[str]]
    layers: dict[str, int]

    def upward(self) -> list[tuple[str, str]]:
        """(importer, imported) pairs where the imported module sits in a higher layer."""
        return sorted((m, t) for m, ts in self.modules.items() for t in ts if self.layers[t] > self.layers[m])

    def cycles(self) -> list[list[str]]:
        """Strongly connected components with more than one module (iterative Tarjan)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on: set[str] = set()
        out: list[list[str]] = []
        for root in sorted(self.modules):
            if root in index:
                continue
            work = [(root, iter(sorted(self.modules[root])))]
            index[root] = low[root] = len(index)
            stack.append(root)
            on.add(root)
            while work:
                v, children = work[-1]
                w = next(children, None)
                if w is not None:
                    if w not in index:
                        index[w] = low[w] = len(index)
                        stack.append(w)
                        on.add(w)
                        work.append((w, iter(sorted(self.modules[w]))))
                    elif w in on:
                        low[v] = min(low[v], index[w])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
        return out


def layer_of(module: str) -> int:
    best, best_len = LAYER_NAMES.index(DEFAULT_LAYER), -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            inside = module == p or ("." in p and module.startswith(p + "."))  # the package root means itself only
            if inside and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(known: set[str], name: str, path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not an edge
                found.add(t)
    return found


def import_graph(package_dir: Path | str | None = None) -> ImportGraph:
    """The import graph of the package in `package_dir` (default: this package's source)."""
    pkg = Path(package_dir or Path(__file__).parent).resolve()
    paths = {_module_name(pkg.parent, p): p for p in sorted(pkg.rglob("*.py"))}
    known = set(paths)
    modules = {m: frozenset(_imports(known, m, p)) for m, p in paths.items()}
    return ImportGraph(modules, {m: layer_of(m) for m in modules})


def report(graph: ImportGraph) -> str:
    lines = []
    for i, name in reversed(list(enumerate(LAYER_NAMES))):
        members = sorted(m for m, layer in graph.layers.items() if layer == i)
        if members:
            lines.append(f"[{name}]")
            lines += [f"  {m} -> {', '.join(sorted(graph.modules[m])) or '-'}" for m in members]
    up, cycles = graph.upward(), graph.cycles()
    lines += [f"UPWARD IMPORT {a} -> {b} ({LAYER_NAMES[graph.layers[a]]} imports {LAYER_NAMES[graph.layers[b]]})" for a, b in up]
    lines += [f"IMPORT CYCLE: {' -> '.join(c)}" for c in cycles]
    if not up and not cycles:
        lines.append(f"{len(graph.modules)} modules: imports only go down, no cycle")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    graph = import_graph(argv[0] if argv else None)
    print(report(graph))  # noqa: T201 - a developer tool's output
    return 1 if graph.upward() or graph.cycles() else 0


if __name__ == "__main__":
    sys.exit(main())
