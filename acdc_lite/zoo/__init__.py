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
