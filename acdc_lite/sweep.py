"""Sweeps: a grid of discover runs (tasks x models x methods x seeds) on an existing engine.

A sweep config (JSON, YAML or TOML) names the grid and the engine:

    tasks: [induction]              # built-in names or task files
    models: [induction-attn-2l]     # zoo names, directories, hub names
    seeds: [0, 1]                   # default [0]
    methods:                        # label -> that method's options (the label is the method unless "method" is given)
      eap: {top_n: 10}
      acdc-strict: {method: acdc, tau: 0.005}
    settings: {n_examples: 16}      # discover settings shared by every cell
    backend: local                  # local (processes) | ray | slurm (submitit)
    workers: 2                      # cells at once (local processes, Ray CPUs, Slurm array parallelism)
    threads: 1                      # torch threads per cell (the same count gives the same circuit bytes)
    ray: {address: null}            # null: a private local Ray started for the sweep; else a cluster address
    slurm: {cluster: slurm, partition: gpu, timeout_min: 60, cpus_per_task: 1, mem_gb: 8, cells_per_job: 1}
                                    # cluster: local runs the jobs as local processes (submitit's LocalExecutor)

Every cell is checked (`DiscoverConfig.parse`: unknown or unused options are errors) before anything runs, and
runs through the discover job (`pipeline.discover_into`) into SWEEP/cells/CELL/, a standard run folder with
run.json. A cell whose run.json says finished (with the same settings) is never recomputed; an interrupted
checkpointing cell resumes. A failed cell is reported in the table and does not stop the others. At the end
SWEEP/results.csv and results.md hold one row per cell. Nothing is written outside SWEEP: the engines' working
files go to SWEEP/.ray and SWEEP/.submitit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from acdc_lite.boundary import InputError, UsageError, read_text
from acdc_lite.runs import RECORD, RunLock, check_output_dir, write_atomic

log = logging.getLogger(__name__)

CELLS = "cells"
RAY_TEMP_MAX = 40  # characters: Ray adds ~65 for a session's socket paths (limit 107)
GRID_KEYS = ("tasks", "models", "methods", "seeds")
TOP_KEYS = (*GRID_KEYS, "settings", "backend", "workers", "threads", "ray", "slurm")
RAY_KEYS = ("address", "num_cpus")
SLURM_KEYS = ("cluster", "partition", "timeout_min", "cpus_per_task", "mem_gb", "gpus_per_node", "cells_per_job",
              "additional")
TABLE_COLUMNS = ("cell", "task", "model", "method", "seed", "status", "edges", "nodes", "faithfulness", "metric_full",
                 "metric_circuit", "forward_passes", "backward_passes", "circuit_sha256", "seconds", "peak_memory_mb", "error")


# ---- config ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One discover run of the grid: its folder name and its settings (a DiscoverConfig as a dict)."""

    name: str
    task: str
    model: str
    label: str  # the methods block it came from
    seed: int
    settings: dict = field(hash=False)


@dataclass(frozen=True)
class SweepConfig:
    cells: tuple[Cell, ...]
    backend: str = "local"
    workers: int = 1
    threads: int = 1
    ray: dict = field(default_factory=dict, hash=False)
    slurm: dict = field(default_factory=dict, hash=False)
    source: str = "sweep config"

    def to_dict(self) -> dict:
        return {"backend": self.backend, "workers": self.workers, "threads": self.threads, "ray": self.ray,
                "slurm": self.slurm, "cells": {c.name: c.settings for c in self.cells}}


def _load_document(path: Path) -> dict:
    """The top-level mapping of a JSON, YAML or TOML file (by suffix)."""
    text = read_text(path, "sweep config")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            value = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            value = yaml.safe_load(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            value = tomllib.loads(text)
        else:
            raise InputError(f"sweep config {path}: unknown format {suffix or '(no suffix)'}; use .json, .yaml, .yml or .toml")
    except InputError:
        raise
    except ImportError as e:
        raise InputError(f"sweep config {path}: reading {suffix} needs {e.name} (pip install {e.name})") from e
    except Exception as e:  # json, yaml and toml each raise their own parse errors
        raise InputError(f"sweep config {path} is not valid {suffix[1:].upper()}: {str(e).splitlines()[0]}") from e
    if not isinstance(value, dict):
        raise InputError(f"sweep config {path}: the top level must be a mapping of {', '.join(GRID_KEYS)}, ...")
    return value


def _strings(doc: dict, key: str, source: str) -> list[str]:
    value = doc.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        example = "induction" if key == "tasks" else "induction-attn-2l"
        raise UsageError(f"{source}: {key} must be a non-empty list of names, e.g. {key}: [{example}]")
    if len(set(value)) != len(value):
        raise UsageError(f"{source}: {key} lists {next(v for v in value if value.count(v) > 1)!r} twice")
    return value


def _seeds(doc: dict, source: str) -> list[int]:
    value = doc.get("seeds", [0])
    value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UsageError(f"{source}: seeds must be a non-empty list of whole numbers, e.g. seeds: [0, 1]")
    if len(set(value)) != len(value):
        raise UsageError(f"{source}: seeds lists {next(v for v in value if value.count(v) > 1)} twice")
    return value


def _methods(doc: dict, source: str) -> dict[str, dict]:
    value = doc.get("methods")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = {v: {} for v in value}
    if not isinstance(value, dict) or not value:
        raise UsageError(f"{source}: methods must map each method to its options, e.g. methods: {{eap: {{top_n: 10}}, acdc: {{}}}}")
    out = {}
    for label, options in value.items():
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise UsageError(f"{source}: methods.{label} must be a mapping of that method's options (or empty)")
        for key in ("model", "task", "seed"):
            if key in options:
                raise UsageError(f"{source}: methods.{label}.{key}: the grid sets {key}; list it under {key}s instead")
        out[str(label)] = dict(options)
    return out


def _int(doc: dict, key: str, default: int, source: str) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{source}: {key} must be a whole number of at least 1, got {value!r}")
    return value


def _block(doc: dict, key: str, known: Sequence[str], source: str) -> dict:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise UsageError(f"{source}: {key} must be a mapping ({', '.join(known)})")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise UsageError(f"{source}: unknown {key} setting {unknown[0]!r}; known: {', '.join(known)}")
    return dict(value)


def _slug(text: str) -> str:
    """A folder-name-safe short form of a task or model (a path becomes its last part)."""
    base = Path(text).stem if ("/" in text or "\\" in text or text.endswith((".jsonl", ".csv", ".json"))) else text
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "x"


def read_sweep_config(path: str | Path, backend: str | None = None, workers: int | None = None) -> SweepConfig:
    """The checked sweep config in `path` (`backend` and `workers` override the file's); every cell's discover
    settings are validated here, so a bad option fails before anything runs."""
    from acdc_lite.pipeline import DiscoverConfig

    path = Path(path)
    source = f"sweep config {path}"
    doc = _load_document(path)
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(TOP_KEYS)} (discover settings go "
                         "under settings, method options under methods)")
    tasks, models, seeds, methods = _strings(doc, "tasks", source), _strings(doc, "models", source), _seeds(doc, source), \
        _methods(doc, source)
    common = doc.get("settings") or {}
    if not isinstance(common, dict):
        raise UsageError(f"{source}: settings must be a mapping of discover settings, e.g. settings: {{n_examples: 16}}")
    for key in ("model", "task", "method", "seed"):
        if key in common:
            raise UsageError(f"{source}: settings.{key}: the grid sets {key}; list it under {key}s instead")
    backend = backend or doc.get("backend", "local")
    if backend not in BACKENDS:
        raise UsageError(f"{source}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    cells, names = [], {}
    for task in tasks:
        for model in models:
            for label, options in methods.items():
                for seed in seeds:
                    settings = {**common, "task": task, "model": model, "method": label, "seed": seed, **options}
                    where = f"{source}, methods.{label} (task {task}, model {model})"
                    try:
                        config = DiscoverConfig.parse(settings, where)  # unknown or unused options fail here
                    except UsageError as e:
                        raise UsageError(str(e) if where in str(e) else f"{where}: {e}") from None
                    name = f"{_slug(task)}__{_slug(model)}__{_slug(label)}__seed{seed}"
                    if name in names:
                        raise UsageError(f"{source}: cells {names[name]} and {(task, model, label, seed)} get the same folder "
                                         f"name {name}; give tasks and models distinct names")
                    names[name] = (task, model, label, seed)
                    cells.append(Cell(name, task, model, label, seed, _settings_dict(config)))
    return SweepConfig(tuple(cells), backend, workers or _int(doc, "workers", 1, source), _int(doc, "threads", 1, source),
                       _block(doc, "ray", RAY_KEYS, source), _block(doc, "slurm", SLURM_KEYS, source), source)


def _settings_dict(config) -> dict:
    """A DiscoverConfig as the plain dict its config.json holds."""
    to_dict = getattr(config, "to_dict", None)
    if to_dict is not None:
        return json.loads(json.dumps(to_dict()))
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config)))


# ---- one cell (runs in a worker: a process, a Ray task or a Slurm job) -------------------------
def cell_status(directory: Path, settings: dict) -> str:
    """"finished" (outputs and a finished run.json with these settings), "interrupted" (a checkpoint to resume),
    "other settings" (a finished run of different settings) or "new"."""
    record = directory / RECORD
    if record.is_file():
        try:
            doc = json.loads(record.read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("outcome") == "finished" and (directory / "circuit.json").is_file():
            return "finished" if doc.get("settings") == settings else "other settings"
    if (directory / "checkpoint.json").is_file():
        return "interrupted"
    return "new"


def run_cell(directory: str, settings: dict, threads: int = 1) -> dict:
    """Run one cell through the discover job into `directory`; never raises: a failure is returned as its row."""
    started = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(threads)
        from acdc_lite.pipeline import DiscoverConfig, discover_into

        path = Path(directory)
        (path / "error.txt").unlink(missing_ok=True)
        status = cell_status(path, settings)
        config = DiscoverConfig.parse(settings, f"cell {path.name}")
        discover_into(path, config, resume=status == "interrupted", force=status == "other settings", progress=False)
        return {"status": "finished"}
    except BaseException as e:  # a worker reports, it does not die (KeyboardInterrupt included: the driver decides)
        message = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        with contextlib.suppress(OSError):
            Path(directory).mkdir(parents=True, exist_ok=True)
            write_atomic(Path(directory) / "error.txt", message + "\n")
        return {"status": "failed", "error": message, "seconds": round(time.perf_counter() - started, 2)}


def run_cells(jobs: list[tuple[str, dict]], threads: int = 1) -> list[dict]:
    """Several cells one after another (a Slurm job holding `cells_per_job` cells)."""
    return [run_cell(directory, settings, threads) for directory, settings in jobs]


# ---- backends: each yields (cell index, outcome) as cells finish --------------------------------
Jobs = list[tuple[int, str, dict]]  # (index, cell directory, settings)


def _env_threads(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _process_context():
    """Worker processes forked from a server process that imported the library once (forkserver: the driver's
    threads and state are not inherited); spawn where there is no forkserver."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["acdc_lite.pipeline"])  # no effect once the server runs
    return context


def local_backend(jobs: Jobs, config: SweepConfig, sweep_dir: Path) -> Iterator[tuple[int, dict]]:
    """Cells in a pool of `workers` processes on this machine."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with _environ(_env_threads(config.threads)), ProcessPoolExecutor(
            max_workers=config.workers, mp_context=_process_context()) as pool:
        futures = {pool.submit(run_cell, d, s, config.threads): i for i, d, s in jobs}
        for future in as_completed(futures):
            yield futures[future], _outcome(future.result)


def _outcome(get: Callable[[], dict]) -> dict:
    """A worker's row, or a failed row when the worker itself died (killed, out of memory, engine error)."""
    try:
        return get()
    except Exception as e:
        return {"status": "failed", "error": f"worker lost: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]}


def ray_backend(jobs: Jobs, config: SweepConfig, sweep_dir: Path) -> Iterator[tuple[int, dict]]:
    """Cells as Ray tasks (one CPU each). With no `ray.address`, a private Ray on this machine: `workers` CPUs,
    bound to 127.0.0.1, token authentication with a fresh token kept in memory, its temporary files in SWEEP/.ray,
    no dashboard, no usage statistics. With an address, the cluster there (its own authentication)."""
    try:
        import ray
    except ImportError as e:
        raise UsageError("backend ray needs Ray: pip install 'acdc-lite[sweep]'") from e
    address = config.ray.get("address")
    env = {**_env_threads(config.threads), "RAY_USAGE_STATS_ENABLED": "0"}
    scratch = None
    if address is None:
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
        temp = (sweep_dir / ".ray").resolve()
        if len(str(temp)) > RAY_TEMP_MAX:  # Ray's unix sockets live below it, and their paths are limited to 107 bytes
            scratch = temp = Path(tempfile.mkdtemp(prefix="acdc-ray-"))
            log.warning("the sweep folder's path is too long for Ray's sockets: Ray's temporary files go to %s, removed "
                        "when the sweep ends", temp)
        temp.mkdir(parents=True, exist_ok=True)
        init = {"num_cpus": int(config.ray.get("num_cpus") or config.workers), "include_dashboard": False,
                "_temp_dir": str(temp), "_node_ip_address": "127.0.0.1"}
    else:
        init = {"address": address}
    with _environ(env), _removed_after(scratch):
        _refresh_ray_auth()
        try:
            ray.init(**init, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": _env_threads(config.threads)})
        except Exception as e:
            raise RuntimeError(f"Ray could not start{' at ' + address if address else ''}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        try:
            remote = ray.remote(num_cpus=1, max_retries=0)(run_cell)
            refs = {remote.remote(d, s, config.threads): i for i, d, s in jobs}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield refs[ref], _outcome(lambda ref=ref: ray.get(ref))
        finally:
            ray.shutdown()
    _refresh_ray_auth()


@contextlib.contextmanager
def _removed_after(directory: Path | None):
    try:
        yield
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _refresh_ray_auth() -> None:
    """Make this process read RAY_AUTH_MODE / RAY_AUTH_TOKEN again (Ray caches them when first imported; this is
    what Ray itself does when it switches token authentication on)."""
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def slurm_backend(jobs: Jobs, config: SweepConfig, sweep_dir: Path) -> Iterator[tuple[int, dict]]:
    """Cells as Slurm jobs through submitit (`slurm.cluster: local` runs them as local processes with submitit's
    LocalExecutor, at most `workers` at once); `cells_per_job` cells share a job. Job logs go to SWEEP/.submitit."""
    try:
        import submitit
    except ImportError as e:
        raise UsageError("backend slurm needs submitit: pip install 'acdc-lite[sweep]'") from e
    opts = dict(config.slurm)
    cluster = opts.pop("cluster", "slurm")
    per_job = int(opts.pop("cells_per_job", 1))
    if cluster not in ("slurm", "local"):
        raise UsageError(f"{config.source}: slurm.cluster must be slurm or local, got {cluster!r}")
    folder = sweep_dir / ".submitit"
    groups = [jobs[i:i + per_job] for i in range(0, len(jobs), per_job)]
    params = {"timeout_min": int(opts.pop("timeout_min", 60)), "cpus_per_task": int(opts.pop("cpus_per_task", config.threads))}
    with _environ(_env_threads(config.threads)):
        if cluster == "local":
            executor = submitit.LocalExecutor(folder=str(folder))
            executor.update_parameters(**params)
            limit = config.workers
        else:
            executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
            extra = {f"slurm_{k}": v for k, v in opts.items() if k != "additional" and v is not None}
            if opts.get("additional"):
                extra["slurm_additional_parameters"] = dict(opts["additional"])
            executor.update_parameters(**params, slurm_array_parallelism=config.workers, **extra)
            limit = len(groups)  # Slurm schedules; submit everything
        queue, running = list(groups), {}
        while queue or running:
            while queue and len(running) < limit:
                group = queue.pop(0)
                job = executor.submit(run_cells, [(d, s) for _, d, s in group], config.threads)
                running[job] = group
            finished = [job for job in running if job.done()]
            if not finished:
                time.sleep(0.2)
                continue
            for job in finished:
                group = running.pop(job)
                outcomes = _outcome(job.result)
                if isinstance(outcomes, dict):  # the job itself failed: every cell in it did
                    outcomes = [outcomes] * len(group)
                for (i, _, _), outcome in zip(group, outcomes, strict=True):
                    yield i, outcome


BACKENDS: dict[str, Callable[[Jobs, SweepConfig, Path], Iterator[tuple[int, dict]]]] = {
    "local": local_backend, "ray": ray_backend, "slurm": slurm_backend}
BACKEND_PACKAGES = {"ray": "ray", "slurm": "submitit"}  # what a backend imports (the [sweep] extra)


def check_backend(backend: str) -> None:
    """A UsageError now, before any file is written, when `backend`'s engine is not installed."""
    import importlib.util

    package = BACKEND_PACKAGES.get(backend)
    if package and importlib.util.find_spec(package) is None:
        raise UsageError(f"backend {backend} needs {package}: pip install 'acdc-lite[sweep]' (or use --backend local)")


# ---- the sweep ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    rows: list[dict]
    table: tuple[Path, Path]  # results.md, results.csv
    computed: int  # cells run now
    reused: int  # finished cells found from an earlier run

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "finished"]


def cell_row(cell: Cell, directory: Path, outcome: dict) -> dict:
    """One table row: the cell, its outcome, and what its circuit.json and run.json say."""
    row = {k: None for k in TABLE_COLUMNS}
    row.update({"cell": cell.name, "task": cell.task, "model": cell.model, "method": cell.label, "seed": cell.seed,
                "status": outcome.get("status", "failed"), "error": outcome.get("error")})
    if row["status"] == "finished":
        try:
            data = (directory / "circuit.json").read_bytes()
            circuit = json.loads(data)
            record = json.loads((directory / RECORD).read_text())
        except (OSError, ValueError) as e:
            row.update(status="failed", error=f"finished but unreadable: {e}")
            return row
        metrics = circuit.get("metrics", {})
        total = record.get("total", {})
        row.update({"edges": len(circuit.get("edges", {})), "nodes": len(_nodes(circuit)),
                    "faithfulness": _round(metrics.get("faithfulness")), "metric_full": _round(metrics.get("metric_full")),
                    "metric_circuit": _round(metrics.get("metric_circuit")),
                    "forward_passes": total.get("forward_passes"), "backward_passes": total.get("backward_passes"),
                    "circuit_sha256": hashlib.sha256(data).hexdigest()[:16], "seconds": total.get("seconds"),
                    "peak_memory_mb": total.get("peak_memory_mb")})
    return row


def _nodes(circuit: dict) -> set[str]:
    edges = circuit.get("edges", {})
    names = edges if isinstance(edges, (dict, list)) else []
    out = set()
    for e in names:
        src, _, rest = str(e).partition("->")
        out.update({src, rest.split("<")[0]})
    return out


def _round(x):
    return None if x is None else round(float(x), 6)


def run_sweep(config: SweepConfig, out: str | Path, progress: bool = True) -> SweepResult:
    """Run every cell of `config` not already finished in `out`, then write out/results.csv and results.md."""
    out = check_output_dir(out)
    check_backend(config.backend)
    with RunLock(out, config.to_dict(), command="sweep"):
        write_atomic(out / "sweep.json", json.dumps(config.to_dict(), indent=1) + "\n")
        cells_dir = out / CELLS
        outcomes: dict[int, dict] = {}
        jobs: Jobs = []
        for i, cell in enumerate(config.cells):
            directory = cells_dir / cell.name
            status = cell_status(directory, cell.settings)
            if status == "finished":
                outcomes[i] = {"status": "finished"}
            else:
                jobs.append((i, str(directory), cell.settings))
        reused = len(outcomes)
        log.info("sweep: %d cells, %d finished earlier, %d to run on %s", len(config.cells), reused, len(jobs), config.backend)
        with tqdm(total=len(config.cells), initial=reused, desc=f"sweep ({config.backend})", unit="cell",
                  disable=not progress) as bar:
            if jobs:
                for i, outcome in BACKENDS[config.backend](jobs, config, out):
                    outcomes[i] = outcome
                    bar.update(1)
                    bar.set_postfix_str(f"{config.cells[i].name}: {outcome.get('status')}", refresh=False)
                    if outcome.get("status") != "finished":
                        log.warning("cell %s failed: %s", config.cells[i].name, outcome.get("error"))
        rows = [cell_row(cell, cells_dir / cell.name, outcomes.get(i, {"status": "failed", "error": "no outcome"}))
                for i, cell in enumerate(config.cells)]
        table = write_results(rows, out, config)
    return SweepResult(rows, table, len(jobs), reused)


def write_results(rows: list[dict], out: Path, config: SweepConfig) -> tuple[Path, Path]:
    """results.md and results.csv (one row per cell, in grid order)."""
    from acdc_lite.benchmark import write_table

    n_failed = sum(r["status"] != "finished" for r in rows)
    notes = [f"Written by `acdc-lite sweep` ({len(rows)} cells, backend {config.backend}, {config.threads} torch thread(s) "
             f"per cell; {n_failed} failed). Each cell's run folder is {CELLS}/CELL/ (circuit.json, config.json, run.json).",
             "seconds and peak_memory_mb come from each cell's run.json; circuit_sha256 is the first 16 hex digits of "
             "the hash of its circuit.json."]
    return write_table(rows, out, "results", "Sweep results", notes)
