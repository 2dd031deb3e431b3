"""The `discover` job end to end: resolve a config, load model and task, search, render, write a run folder.

Used by the CLI (which only parses and writes) and usable from Python: `run_discover` computes,
`discover_into` owns a run folder (lock, checkpoints, outputs, run record).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acdc_lite.boundary import UsageError, parse_settings, read_json_object
from acdc_lite.choices import DTYPE_NAMES, Ablation, Processing
from acdc_lite.runs import DEFAULT_INTERVAL, RECORD, Checkpointer, RunLock, RunRecord, check_output_dir, interruptible
from acdc_lite.search import CHECKPOINTED, METHODS, SearchError
from acdc_lite.search.methods import all_options, options_for

if TYPE_CHECKING:  # torch, the model and the task load only when a run starts: a bad setting is refused at once
    import torch

    from acdc_lite.circuit import Circuit
    from acdc_lite.task import Task

log = logging.getLogger(__name__)

DEFAULT_MODEL = "induction-attn-2l"
DEFAULT_TASK = "induction"
OUTPUTS = ("circuit.json", "circuit.svg", "config.json")
CHECKPOINT = "checkpoint.json"


@dataclass(frozen=True)
class DiscoverConfig:
    """The settings of one discover run; types and ranges are checked wherever they come from (`parse`).

    options: the method's options object, built from the method registry (`acdc_lite.search.methods`); in a
    config file either an `"options": {...}` block or the same keys at the top level. An option the method does
    not use is an error naming both."""

    model: str = DEFAULT_MODEL
    task: str = DEFAULT_TASK
    method: str = "hybrid"
    metric: str | None = None
    ablation: str = "resample"
    n_examples: int = field(default=64, metadata={"ge": 1})
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    batch_size: int = field(default=32, metadata={"ge": 1})
    processing: str = "none"  # weight processing of a Hugging Face model (acdc_lite.models.Processing)
    offline: bool = False  # never try the Hugging Face hub
    device_map: str | None = None  # accelerate placement: auto | balanced | sequential | a JSON object {module: device}
    max_memory: str | None = None  # "2GB" (main memory) or "cpu=2GB,0=10GB": the run's memory limit (see acdc_lite.memory)
    offload_folder: str | None = None  # where modules that do not fit go (with device_map)
    options: Any = None  # the method's options (None: its defaults; a dict is built into the options object)

    def __post_init__(self):
        if self.method not in METHODS:
            raise SearchError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.dtype not in DTYPE_NAMES:
            raise SearchError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPE_NAMES)}")
        if self.processing not in {p.value for p in Processing}:
            raise SearchError(f"unknown processing {self.processing!r}; choose one of {', '.join(p.value for p in Processing)}")
        if self.ablation not in {a.value for a in Ablation}:
            raise SearchError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(a.value for a in Ablation)}")
        if self.device is not None:
            check_device(self.device)
        if self.options is None or isinstance(self.options, dict):
            object.__setattr__(self, "options", options_for(self.method, self.options or {}))
        elif not isinstance(self.options, METHODS[self.method].options):
            raise SearchError(f"options of {self.method} must be a {METHODS[self.method].options.__name__} or a dict, "
                              f"got {type(self.options).__name__}")
        placement(self)  # device_map, max_memory and offload_folder are checked here, before any work

    @classmethod
    def parse(cls, values: dict, source: str, as_options: bool = False) -> DiscoverConfig:
        """From a dict of settings (strict types, ranges); errors name `source` and the field. Method options may
        be in an "options" object or at the top level (not both for one option)."""
        common, options = _split_options(values, source)
        config = parse_settings(cls, common, source, as_options)
        return replace(config, options=options_for(config.method, options, source, as_options))

    @classmethod
    def resolve(cls, config_file: str | Path | None = None, **overrides) -> DiscoverConfig:
        """Defaults <- the JSON config file <- explicit overrides (None means 'not given'; method options by name)."""
        values = {}
        if config_file:
            values = read_json_object(config_file, "config file")
            cls.parse(values, f"config file {config_file}")
        given = {k: v for k, v in overrides.items() if v is not None}
        parse_settings(cls, _split_options(given, "options")[0], "options", as_options=True)  # the options' own types
        file_common, file_options = _split_options(values, f"config file {config_file}") if values else ({}, {})
        given_common, given_options = _split_options(given, "options")
        merged = {**file_common, **given_common, "options": {**file_options, **given_options}}
        return cls.parse(merged, f"config file {config_file} with the options" if config_file else "options",
                         as_options=not config_file)

    def to_dict(self) -> dict:
        """JSON-able, as config.json holds it (method options in an "options" object)."""
        return asdict(self)

    def flat(self) -> dict:
        """JSON-able with the method options at the top level (a checkpoint's settings: a difference names the option)."""
        d = self.to_dict()
        return {**{k: v for k, v in d.items() if k != "options"}, **d["options"]}


def _split_options(values: dict, source: str) -> tuple[dict, dict]:
    """(common settings, method options) of a settings dict: the "options" object plus any top-level key that is
    some method's option."""
    common = dict(values)
    block = common.pop("options", None)
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise UsageError(f"{source}: options must be an object of method options, e.g. {{\"tau\": 0.01}}")
    known = all_options()
    flat = {k: common.pop(k) for k in list(common) if k in known}
    both = sorted(set(flat) & set(block))
    if both:
        raise UsageError(f"{source}: {both[0]} is given both at the top level and in options; give it once")
    return common, {**block, **flat}


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def placement(config: DiscoverConfig) -> dict:
    """`load_model`'s device_map / max_memory / offload_folder arguments from the config ({} when not placed);
    a UsageError naming the option when one cannot work."""
    import json

    if config.max_memory is not None:
        from acdc_lite.memory import parse_max_memory  # (imports torch: only when a limit is given)
    if config.device_map is None:
        if config.offload_folder is not None:
            raise UsageError("--offload-folder only applies with --device-map (e.g. --device-map auto)")
        if config.max_memory is not None:
            parse_max_memory(config.max_memory)  # the run's limit (checked against the memory plan)
        return {}
    if config.device is not None:
        raise UsageError("--device and --device-map both place the model; give one (--device-map auto uses every device)")
    device_map = config.device_map
    if device_map.lstrip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except json.JSONDecodeError as e:
            raise UsageError(f"--device-map is not a JSON object ({e.msg}); e.g. '{{\"model.layers.1\": \"disk\"}}'") from None
        if not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in device_map.items()):
            raise UsageError("--device-map: a JSON object of module name -> device (cpu, disk, or a GPU index)")
    elif device_map not in DEVICE_MAPS:
        raise UsageError(f"--device-map {device_map!r}: use one of {', '.join(DEVICE_MAPS)} or a JSON object "
                         "{module name: device}")
    out = {"device_map": device_map}
    if config.max_memory is not None:
        out["max_memory"] = parse_max_memory(config.max_memory)
    if config.offload_folder is not None:
        out["offload_folder"] = config.offload_folder
    return out


def check_device(device: str) -> torch.device:
    """The torch device named by `device`, or a UsageError saying why it cannot be used here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:0 or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices; use cuda:0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device}: only cpu, cuda and mps are supported")
    return dev


@dataclass(frozen=True)
class DiscoverOutput:
    circuit: Circuit
    config: DiscoverConfig
    svg: str | None  # None when graphviz's dot is not installed
    svg_problem: str | None
    n_examples_asked: int | None = None  # set when the task had fewer examples than asked
    memory_plan: object = None  # the acdc_lite.memory.MemoryPlan the run was checked against


def task_hash(task: Task) -> str:
    """sha256 over the task's token tensors: identifies the prompts a checkpoint was made on."""
    import torch

    h = hashlib.sha256()
    for t in (task.clean, task.corrupt, task.answers, task.foils, task.answer_pos):
        if t is not None:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def plan_memory(config: DiscoverConfig, model, task: Task):
    """The memory plan of this run (`acdc_lite.memory`), made after the model and task are loaded; with
    `max_memory`, the batch size shrinks until the estimated peak fits (a UsageError when it never does)."""
    from acdc_lite import memory

    options = getattr(config, "options", None)
    ig_steps = getattr(config, "ig_steps", None) or getattr(options, "ig_steps", None) or 5
    args = (memory.model_shape(model), config.method, len(task), int(task.clean.shape[1]), config.batch_size)
    kwargs = {"ig_steps": ig_steps, "ablation": config.ablation, "baseline": memory.resident_bytes(),
              "offloaded": memory.offloaded_bytes(model)}
    if config.max_memory is None:
        return memory.estimate(*args, **kwargs)
    limits = memory.parse_max_memory(config.max_memory)
    if "cpu" not in limits:
        return memory.estimate(*args, **kwargs)
    return memory.fit(*args, limits["cpu"], **kwargs)


def run_discover(config: DiscoverConfig, progress: bool = True, checkpoint: Checkpointer | None = None,
                 checkpoint_dir: str | Path | None = None, resume: bool = False,
                 checkpoint_interval: float = DEFAULT_INTERVAL, on_checkpoint=None, on_plan=None) -> DiscoverOutput:
    """Load, search and render; writes nothing but the checkpoint of a checkpointing method (see `discover_into`).
    `on_checkpoint(state)` is called after each checkpoint save, `on_plan(plan)` with the memory plan before the search
    (with `max_memory`, a batch size that does not fit is lowered first)."""
    import torch

    from acdc_lite.models import fingerprint, load_model
    from acdc_lite.search import discover
    from acdc_lite.task import load_task

    model = load_model(config.model, device=config.device, dtype=getattr(torch, config.dtype), processing=config.processing,
                       offline=config.offline or None, **placement(config))
    task = load_task(config.task, model, n_examples=config.n_examples, seed=config.seed, metric=config.metric)
    asked = None
    if len(task) < config.n_examples:
        log.warning("task %s has %d examples, fewer than the %d asked: using %d (recorded in config.json and run.json)",
                    config.task, len(task), config.n_examples, len(task))
        asked, config = config.n_examples, replace(config, n_examples=len(task))
    plan = plan_memory(config, model, task)
    if plan.batch_size < min(config.batch_size, len(task)):
        log.warning("--max-memory %s: batch size %d -> %d (%s)", config.max_memory, config.batch_size, plan.batch_size,
                    plan.describe())
        config = replace(config, batch_size=plan.batch_size)
    log.info("%s", plan.describe())
    if on_plan is not None:
        on_plan(plan)
    if checkpoint is None and checkpoint_dir is not None and config.method in CHECKPOINTED:
        settings = {**config.flat(), "model_fingerprint": fingerprint(model), "task_hash": task_hash(task)}
        checkpoint = Checkpointer(Path(checkpoint_dir) / CHECKPOINT, settings, checkpoint_interval, on_save=on_checkpoint)
        if resume and not checkpoint.exists():
            raise UsageError(f"nothing to resume in {checkpoint_dir}: no {CHECKPOINT} (a finished run removes it); "
                             "run without --resume")
        if not resume:
            checkpoint.remove()  # a fresh run: forget any earlier interrupted one
    circuit = discover(model, task, config.method, options=config.options, seed=config.seed, ablation=config.ablation,
                       metric=config.metric, batch_size=config.batch_size, progress=progress, checkpoint=checkpoint)
    circuit = with_detected_roles(circuit, model, task)
    svg, problem = None, None
    try:
        from acdc_lite.render import render_svg, roles_for

        svg = render_svg(circuit, roles=roles_for(config.model))
    except ImportError as e:
        problem = f"rendering unavailable: {e}"
    except RuntimeError as e:
        problem = str(e)
    return DiscoverOutput(circuit, config, svg, problem, asked, plan)


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
    from acdc_lite.circuit import write_atomic

    directory = Path(directory)
    written = [out.circuit.save(directory / "circuit.json")]
    if out.svg is not None:
        write_atomic(directory / "circuit.svg", out.svg)
        written.append(directory / "circuit.svg")
    else:
        (directory / "circuit.svg").unlink(missing_ok=True)  # not a stale drawing of another circuit
    write_atomic(directory / "config.json", _config_json(out.config))
    written.append(directory / "config.json")
    (directory / CHECKPOINT).unlink(missing_ok=True)  # the run is complete: nothing left to resume
    return written


def _config_json(config: DiscoverConfig) -> str:
    import json

    return json.dumps(config.to_dict(), indent=1) + "\n"


def discover_into(directory: str | Path, config: DiscoverConfig, *, resume: bool = False, force: bool = False,
                  progress: bool = True, checkpoint_interval: float = DEFAULT_INTERVAL, on_plan=None) -> DiscoverOutput:
    """Run discover in the run folder `directory`: checked before any work, locked for the run, checkpointed
    (methods in CHECKPOINTED: every `checkpoint_interval` seconds and on SIGINT/SIGTERM), then circuit.json,
    circuit.svg, config.json and the run record run.json. A finished run there is refused unless `force`."""
    directory = check_output_dir(directory)
    finished = [n for n in OUTPUTS if (directory / n).exists()]
    if finished and not (force or resume):
        raise UsageError(f"{directory} already holds a run ({', '.join(finished)}); pass --force to overwrite it, "
                         "or choose another --out")
    if (directory / CHECKPOINT).is_file() and not (force or resume):
        raise UsageError(f"{directory} holds an interrupted run ({CHECKPOINT}); continue it with the same options plus "
                         "--resume, or pass --force to start over")
    if resume and config.method not in CHECKPOINTED:
        raise UsageError(f"--resume: {config.method} does not checkpoint (it is one quick pass); run without --resume")
    if resume and not (directory / CHECKPOINT).is_file():
        raise UsageError(f"nothing to resume in {directory}: no {CHECKPOINT} (a finished run removes it); run without --resume")
    settings = config.to_dict()
    with RunLock(directory, settings), interruptible():
        if force and not resume:
            for name in (*OUTPUTS, RECORD, CHECKPOINT):
                (directory / name).unlink(missing_ok=True)
        record = RunRecord(directory, "discover", settings).start(resume=resume)
        try:
            result = run_discover(config, progress=progress, checkpoint_dir=directory, resume=resume,
                                  checkpoint_interval=checkpoint_interval, on_checkpoint=record.checkpointed, on_plan=on_plan)
        except KeyboardInterrupt:
            if (directory / CHECKPOINT).is_file():
                record.finish("interrupted", **record.passes_at_checkpoint)
            raise
        files = write_outputs(result, directory)
        facts = {"n_examples_asked": result.n_examples_asked} if result.n_examples_asked else {}
        if result.memory_plan is not None:
            facts["memory_plan"] = result.memory_plan.to_dict()
        record.finish("finished", result.circuit.cost.get("forward_passes", 0.0),
                      result.circuit.cost.get("backward_passes", 0.0), outputs=[f.name for f in files], **facts)
    return result
