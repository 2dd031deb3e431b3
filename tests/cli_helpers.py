"""What the CLI tests share: `run` (typer's runner, arguments stringified) and `write_id_task`, a JSONL task of
random token-id prompts a user could have written."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from acdc_lite.cli import app

_runner = CliRunner()


def run(*args, **kwargs):
    """`acdc-lite ARGS...` in-process; a typer Result (exit_code, output)."""
    return _runner.invoke(app, list(map(str, args)), **kwargs)


def write_id_task(path: Path, n_rows: int, seed: int = 0, low: int = 0, answer_at: int = 0) -> Path:
    """`n_rows` lines {"clean", "corrupt", "answer", "foil"} of 6 random ids in [low, 20): the answer is the clean
    prompt's token at `answer_at`, the foil the next id (mod 20)."""
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n_rows):
        clean = torch.randint(low, 20, (6,), generator=g).tolist()
        corrupt = torch.randint(low, 20, (6,), generator=g).tolist()
        lines.append(json.dumps({"clean": clean, "corrupt": corrupt, "answer": clean[answer_at],
                                 "foil": (clean[answer_at] + 1) % 20}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
