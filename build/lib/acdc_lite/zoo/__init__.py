"""The model zoo: small models shipped inside the package, one directory each.

Each directory holds `config.json` + `model.safetensors` (a SmallTransformer, or a Hugging Face
model wrapped by the bridge) and `card.json`: its ground-truth circuit and how it was measured.
"""

from __future__ import annotations

import json
from pathlib import Path

ZOO_DIR = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "card.json").is_file())


def exists(name: str) -> bool:
    return name in names()


def model_dir(name: str) -> Path:
    if not exists(name):
        raise KeyError(f"no zoo model {name!r}; zoo models: {', '.join(names()) or 'none'}")
    return ZOO_DIR / name


def card(name: str) -> dict:
    """The model card: architecture, training, task accuracy and ground-truth heads with their scores."""
    return json.loads((model_dir(name) / "card.json").read_text())


def ground_truth_nodes(card: dict) -> set[str]:
    """The card's ground-truth heads (and MLPs, on cards that measure them) by name ("a0.h1", "m1")."""
    return {entry.get("node", entry.get("head")) for entry in card.get("ground_truth", [])}


def counts_mlps(card: dict) -> bool:
    """Whether the card measured MLPs as well as heads (cards with a patching `circuit` section do)."""
    return "circuit" in card.get("measurement", {})


def ground_truth_edges(card: dict) -> set[str] | None:
    """The card's claimed edges ("a0.h1->m1", ...), or None on cards that claim only nodes."""
    edges = card.get("measurement", {}).get("circuit", {}).get("edges")
    return None if edges is None else {e["edge"] for e in edges}
