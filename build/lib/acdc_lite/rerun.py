"""Finding a saved circuit's model and task again from what its file records.

A circuit file records the model as `model.source` (kind, the reference as the user gave it, for a local
directory also `from_circuit`: the path relative to the circuit file, the weight processing and the
measured equivalence) and the task as `task.reference` (a built-in or registered name with its
parameters, or a JSONL file as given plus `from_circuit` and its sha256). A local path is looked for
relative to the circuit file first, then as given (relative to the working directory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from acdc_lite.circuit import Circuit, CircuitError
from acdc_lite.models import SourceKind, load_model
from acdc_lite.task import Task, file_sha256, load_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rerun:
    """A circuit with the model and task it was found on, found again."""

    circuit: Circuit
    model: nn.Module
    task: Task
    metric: str | None  # the metric the circuit's search used (validate with the same one)


def _candidates(ref: dict) -> list[Path]:
    """Where a local path may be: relative to the circuit file, then as given."""
    out = [Path(ref["resolved"])] if ref.get("resolved") else []
    given = Path(str(ref.get("given", ""))).expanduser()
    if str(given) and given not in out:
        out.append(given)
    return out


def _tried(paths: list[Path]) -> str:
    return " and ".join(str(p) for p in paths) or "no path (the file records none)"


def find_model(circuit: Circuit, where: str = "the circuit", *, processing: str | None = None,
               offline: bool | None = None) -> nn.Module:
    """The model `circuit` records, loaded with its recorded weight processing (or `processing`)."""
    src = circuit.model.source
    if not isinstance(src, dict):  # a file from before references were recorded: the model's name is all there is
        return load_model(circuit.model.name, processing=processing or "none", offline=offline)
    processing = processing or src.get("processing") or "none"
    kind = SourceKind(src.get("kind"))
    if kind is SourceKind.IN_MEMORY:
        raise CircuitError(f"{where} was found on a model object built in Python ({src.get('given')}), which cannot be "
                           "found again from a file; pass --model")
    if kind is SourceKind.LOCAL:
        paths = _candidates(src)
        for path in paths:
            if path.is_dir():
                return load_model(str(path), processing=processing, offline=offline)
        raise CircuitError(f"{where}: its model directory is missing: tried {_tried(paths)}; pass --model DIR")
    return load_model(src["given"], processing=processing, offline=offline)


def find_task(circuit: Circuit, model: nn.Module, where: str = "the circuit") -> Task:
    """The task `circuit` records, built again for `model` with the recorded parameters."""
    ref = circuit.task.get("reference")
    if not isinstance(ref, dict):
        name = circuit.task.get("name")
        if not name:
            raise CircuitError(f"{where} does not name its task; pass --task")
        return load_task(name, model, n_examples=circuit.task.get("n_examples", 64))
    n_examples = ref.get("n_examples") or circuit.task.get("n_examples", 64)
    if ref.get("kind") != "file":
        return load_task(ref["given"], model, n_examples=n_examples, seed=ref.get("seed", 0), metric=ref.get("metric"),
                         padding_side=circuit.task.get("padding_side"))
    paths = _candidates(ref)
    for path in paths:
        if path.is_file():
            digest = file_sha256(path)
            if ref.get("sha256") and digest != ref["sha256"]:
                raise CircuitError(f"{where}: task file {path} has changed since the circuit was found (sha256 "
                                   f"{digest[:12]}, recorded {ref['sha256'][:12]}); restore it or pass --task")
            return load_task(str(path), model, n_examples=n_examples, metric=ref.get("metric"),
                             padding_side=circuit.task.get("padding_side"))
    raise CircuitError(f"{where}: its task file is missing: tried {_tried(paths)}; pass --task FILE")


def rerun(circuit_path: str | Path, *, model: str | None = None, task: str | None = None, n_examples: int | None = None,
          seed: int | None = None, processing: str | None = None, offline: bool | None = None) -> Rerun:
    """Load a circuit file and find its model and task (either can be overridden by a name or path)."""
    circuit_path = Path(circuit_path)
    circuit = Circuit.load(circuit_path)
    where = str(circuit_path)
    if model is not None:
        hooked = load_model(model, processing=processing or (circuit.model.source or {}).get("processing") or "none",
                            offline=offline)
    else:
        hooked = find_model(circuit, where, processing=processing, offline=offline)
    if task is not None or n_examples is not None or seed is not None:
        ref = circuit.task.get("reference") or {}
        name = task or ref.get("resolved") or ref.get("given") or circuit.task.get("name")
        if not name:
            raise CircuitError(f"{where} does not name its task; pass --task")
        t = load_task(name, hooked, n_examples=n_examples or ref.get("n_examples") or circuit.task.get("n_examples", 64),
                      seed=seed if seed is not None else ref.get("seed", 0), metric=ref.get("metric"))
    else:
        t = find_task(circuit, hooked, where)
    return Rerun(circuit, hooked, t, circuit.method.get("metric"))
