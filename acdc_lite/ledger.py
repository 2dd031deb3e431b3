"""Past runs, from their run records: find every `run.json` (and `NAME.run.json`, as `validate --out NAME.json`
writes) under some folders and put them in one table to compare.

Columns: folder, command, outcome, task, model, method, edges, faithfulness, seconds, forward passes, peak memory
(MB), started, and the run's own headline numbers (`results`, e.g. an SAE's FVU). What a record does not hold is
read from the outputs beside it (a discover run's circuit.json, a validation report), and left empty otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

COLUMNS = ("folder", "command", "outcome", "task", "model", "method", "edges", "faithfulness", "seconds", "forward_passes",
           "peak_memory_mb", "started", "results")


def find_records(directories: Sequence[str | Path]) -> list[Path]:
    """Every run record under `directories` (a record file itself is taken as given), sorted by path."""
    found = set()
    for d in directories:
        d = Path(d)
        if d.is_file():
            found.add(d)
            continue
        if not d.is_dir():
            raise FileNotFoundError(f"{d} is not a folder or a run record; give folders holding runs (run.json files)")
        found.update(p for p in d.rglob("*.json") if p.name == "run.json" or p.name.endswith(".run.json"))
    return sorted(found)


def _read(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return d if isinstance(d, dict) else None


def record_row(path: Path) -> dict:
    """One row of the table for the run record at `path`."""
    rec = _read(path) or {}
    settings = rec.get("settings") if isinstance(rec.get("settings"), dict) else {}
    run = rec.get("run") if isinstance(rec.get("run"), dict) else {}
    total = rec.get("total") if isinstance(rec.get("total"), dict) else {}
    parts = rec.get("parts") if isinstance(rec.get("parts"), list) else []
    row = {"folder": str(path.parent if path.name == "run.json" else path.with_name(path.name[:-len(".run.json")])),
           "command": rec.get("command", "?" if rec else "unreadable record"), "outcome": rec.get("outcome"),
           "task": run.get("task", settings.get("task")), "model": run.get("model", settings.get("model")),
           "method": run.get("method", settings.get("method")), "edges": None, "faithfulness": None,
           "seconds": total.get("seconds"), "forward_passes": total.get("forward_passes"),
           "peak_memory_mb": total.get("peak_memory_mb"), "started": parts[0].get("started") if parts and isinstance(parts[0], dict)
           else None, "results": ""}
    results = rec.get("results") if isinstance(rec.get("results"), dict) else {}
    row["edges"], row["faithfulness"] = results.get("edges"), results.get("faithfulness")
    if rec.get("command") == "discover":
        circuit = _read(path.parent / "circuit.json") or {}
        edges = circuit.get("edges")
        row["edges"] = len(edges) if isinstance(edges, (list, dict)) else row["edges"]
        metrics = circuit.get("metrics") if isinstance(circuit.get("metrics"), dict) else {}
        row["faithfulness"] = metrics.get("faithfulness", row["faithfulness"])
    elif rec.get("command") == "validate":
        report = _read(path.with_name(path.name[:-len(".run.json")] + ".json")) or {}
        row["task"], row["model"] = report.get("task", row["task"]), report.get("model", row["model"])
        row["method"] = f"validate {report['method']}" if report.get("method") else "validate"
        if isinstance(report.get("faithfulness"), (int, float)):
            row["faithfulness"] = report["faithfulness"]
        if isinstance(report.get("n_edges"), int):
            row["edges"] = report["n_edges"]
    row["results"] = ", ".join(f"{k}={v}" for k, v in results.items() if k not in ("edges", "faithfulness"))
    return row


def runs_table(directories: Sequence[str | Path], sort: str | None = None):
    """A pandas DataFrame with one row per run record under `directories` (see module docstring)."""
    import pandas as pd

    if sort is not None and sort not in COLUMNS:
        from acdc_lite.boundary import UsageError

        raise UsageError(f"unknown --sort column {sort!r}; choose one of {', '.join(COLUMNS)}")
    frame = pd.DataFrame([record_row(p) for p in find_records(directories)], columns=list(COLUMNS))
    frame["edges"] = frame["edges"].astype("Int64")
    if sort is not None:
        frame = frame.sort_values(sort, kind="stable", na_position="last").reset_index(drop=True)
    return frame
