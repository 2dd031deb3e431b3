"""The `discover` job end to end: resolve a config, load model and task, search, render.

Used by the CLI (which only parses and writes) and usable from Python.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from acdc_lite.circuit import Circuit, write_atomic
from acdc_lite.models import Processing, load_model
from acdc_lite.patching import Ablation
from acdc_lite.search import METHODS, SearchError, discover
from acdc_lite.task import load_task

log = logging.getLogger(__name__)

DEFAULT_MODEL = "induction-attn-2l"
DEFAULT_TASK = "induction"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DiscoverConfig:
    model: str = DEFAULT_MODEL
    task: str = DEFAULT_TASK
    method: str = "hybrid"
    tau: float | None = None
    metric: str | None = None
    ablation: str = "resample"
    level: str = "edge"
    n_examples: int = 64
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    top_n: int | None = None
    target_faithfulness: float = 0.9
    ig_steps: int = 5
    batch_size: int = 32
    processing: str = "none"  # weight processing of a Hugging Face model (acdc_lite.models.Processing)
    offline: bool = False  # never try the Hugging Face hub

    def __post_init__(self):
        if self.method not in METHODS:
            raise SearchError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.tau is not None and self.tau < 0:
            raise SearchError(f"tau must be >= 0, got {self.tau}")
        if self.n_examples < 1:
            raise SearchError(f"--n-examples must be at least 1, got {self.n_examples}")
        if self.dtype not in DTYPES:
            raise SearchError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.processing not in {p.value for p in Processing}:
            raise SearchError(f"unknown processing {self.processing!r}; choose one of {', '.join(p.value for p in Processing)}")
        if self.ablation not in {a.value for a in Ablation}:
            raise SearchError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(a.value for a in Ablation)}")

    @classmethod
    def resolve(cls, config_file: str | Path | None = None, **overrides) -> DiscoverConfig:
        """Defaults <- the JSON config file <- explicit overrides (None means 'not given')."""
        values = {}
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise SearchError(f"config file {path} does not exist")
            try:
                values = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise SearchError(f"config file {path} is not JSON: {e.msg}") from e
            known = {f.name for f in fields(cls)}
            unknown = set(values) - known
            if unknown:
                raise SearchError(f"config file {path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class DiscoverOutput:
    circuit: Circuit
    config: DiscoverConfig
    svg: str | None  # None when graphviz's dot is not installed
    svg_problem: str | None


CHECKPOINT, CHECKPOINT_CONFIG = "checkpoint.json", "checkpoint-config.json"


def run_discover(config: DiscoverConfig, progress: bool = True, checkpoint_dir: str | Path | None = None,
                 resume: bool = False) -> DiscoverOutput:
    """Load, search and render. Writes nothing, except that an acdc run given `checkpoint_dir` checkpoints
    there (with the settings it started with) once the search starts; `resume` continues from that."""
    checkpoint = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None and config.method == "acdc" else None
    settings = json.loads(json.dumps(asdict(config)))
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise SearchError(f"nothing to resume in {checkpoint_dir}: only an interrupted acdc run leaves a {CHECKPOINT}; "
                              "run without --resume")
        if json.loads(checkpoint.with_name(CHECKPOINT_CONFIG).read_text()) != settings:
            raise SearchError(f"{checkpoint_dir} holds an interrupted run with other settings ({CHECKPOINT_CONFIG}); "
                              "resume with the same options or use another output directory")
    model = load_model(config.model, device=config.device, dtype=DTYPES[config.dtype], processing=config.processing,
                       offline=config.offline or None)
    task = load_task(config.task, model, n_examples=config.n_examples, seed=config.seed, metric=config.metric)
    if checkpoint is not None and not resume:  # a fresh run: forget any earlier interrupted one
        checkpoint.unlink(missing_ok=True)
        write_atomic(checkpoint.with_name(CHECKPOINT_CONFIG), json.dumps(settings))
    circuit = discover(model, task, config.method, seed=config.seed, ablation=config.ablation, metric=config.metric,
                       tau=config.tau, level=config.level, top_n=config.top_n, target_faithfulness=config.target_faithfulness,
                       ig_steps=config.ig_steps, batch_size=config.batch_size, progress=progress,
                       **({"checkpoint": str(checkpoint)} if checkpoint is not None else {}))
    circuit = with_detected_roles(circuit, model, task)
    svg, problem = None, None
    try:
        from acdc_lite.render import render_svg, roles_for

        svg = render_svg(circuit, roles=roles_for(config.model))
    except ImportError as e:
        problem = f"rendering unavailable: {e}"
    except RuntimeError as e:
        problem = str(e)
    return DiscoverOutput(circuit, config, svg, problem)


def with_detected_roles(circuit: Circuit, model, task) -> Circuit:
    """`circuit` carrying the roles the head detectors give its heads on the task's prompts (how, in provenance)."""
    from acdc_lite.explore.heads import detect_heads

    heads = [str(h) for h in circuit.heads()]
    if not heads:
        return circuit
    report = detect_heads(model, task, heads=heads)
    return replace(circuit, roles=report.roles(), provenance={**circuit.provenance, "roles": report.describe()})


def write_outputs(out: DiscoverOutput, directory: str | Path) -> list[Path]:
    """circuit.json, circuit.svg (when rendered) and config.json, each written atomically."""
    directory = Path(directory)
    written = [out.circuit.save(directory / "circuit.json")]
    if out.svg is not None:
        write_atomic(directory / "circuit.svg", out.svg)
        written.append(directory / "circuit.svg")
    write_atomic(directory / "config.json", json.dumps(asdict(out.config), indent=1) + "\n")
    written.append(directory / "config.json")
    for name in (CHECKPOINT, CHECKPOINT_CONFIG):  # the run is complete: nothing left to resume
        (directory / name).unlink(missing_ok=True)
    return written
