"""acdc-lite command line: parse, one library call, write. Run `acdc-lite --help` (or `python -m acdc_lite`).

Every command imports the library (and so torch) inside its body: `--help`, `--version`, `version`,
`tasks list` and `zoo list` stay light.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
import typing
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Automated circuit discovery for transformer language models.")
zoo_app = typer.Typer(no_args_is_help=True, help="Models shipped with acdc-lite.")
tasks_app = typer.Typer(no_args_is_help=True, help="Built-in tasks.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(tasks_app, name="tasks")
explore_app = typer.Typer(no_args_is_help=True, help="Look at a model on a task: activation-patching sweeps, path patching, "
                                                     "head detectors, logit lens, neurons.")
app.add_typer(explore_app, name="explore")

STATE: dict = {"debug": False, "track": None}


def _version_text() -> str:
    from acdc_lite import __version__

    return json.dumps({"acdc-lite": __version__, "python": sys.version.split()[0]})


def _print_version(value: bool) -> None:
    if value:
        typer.echo(_version_text())
        raise typer.Exit()


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
         version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit."),
         track: Path | None = typer.Option(None, "--track", help="Also log each run's record and outputs to a local MLflow "
                                           "store in this folder (needs acdc-lite[track]).")):
    STATE["debug"] = debug
    STATE["track"] = track
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# every character str.splitlines breaks at, shown escaped: a name the user gave (a config key "\r") keeps the error one line
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def _fail(error: BaseException, code: int = 1) -> None:
    """One clear line on stderr and the exit code (2: usage, 1: the rest); a traceback only with --debug."""
    if STATE["debug"]:
        raise error
    typer.echo(f"error: {str(error).translate(_LINE_BREAKS)}", err=True)
    raise typer.Exit(code)


def _number(x) -> str:
    return "n/a (the metric is the same for the full and the ablated model)" if x is None else f"{x:.3f}"


def _guard(fn):
    import time

    from acdc_lite.boundary import UsageError
    from acdc_lite.runs import Terminated

    STATE["started"] = time.perf_counter()
    try:
        result = fn()
        if STATE["track"] is not None and isinstance(result, Path) and result.is_file():
            from acdc_lite.tracking import log_record

            typer.echo(f"tracked as MLflow run {log_record(result, STATE['track'])} in {STATE['track']}", err=True)
        return result
    except typer.Exit:
        raise
    except KeyboardInterrupt as e:
        if STATE["debug"]:
            raise
        typer.echo("interrupted" + (" (SIGTERM)" if isinstance(e, Terminated) else "")
                   + "; a checkpointing run continues with the same options plus --resume", err=True)
        raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
    except UsageError as e:
        _fail(e, 2)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError, FloatingPointError, ImportError, OSError) as e:
        _fail(e)
    except Exception as e:  # a bug: still one line, the traceback with --debug
        _fail(RuntimeError(f"internal error {type(e).__name__}: {e}; re-run with --debug for the traceback and report it"))


def _with_method_options(command):
    """Give `command` one --option per method option in the registry (`acdc_lite.search.methods`), with the
    registry's type and help, and --method the registry's names; the command receives the given method options
    (not None) as `method_options`."""
    import copy

    from acdc_lite.search.methods import METHODS, all_options

    sig = inspect.signature(command)
    hints = typing.get_type_hints(command)
    params = []
    for p in sig.parameters.values():
        if p.name == "method_options":
            continue
        if p.name in ("method", "resume"):  # their help names the registered methods
            info = copy.copy(p.default)
            info.help = (" | ".join(METHODS) + " (default hybrid)" if p.name == "method" else
                         ", ".join(n for n, spec in METHODS.items() if spec.checkpointable) + ": " + info.help)
            p = p.replace(default=info)
        params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
    names = []
    for name, entry in all_options().items():
        annotation = _cli_type(entry["type"])
        flag = f"--{name.replace('_', '-')}"
        decl = (f"{flag}/--no-{name.replace('_', '-')}",) if annotation is bool else (flag,)
        default = typer.Option(None, *decl, help=f"{entry['help']} [{', '.join(entry['methods'])}]",
                               rich_help_panel="Method options")
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation | None))
        names.append(name)

    @functools.wraps(command)
    def wrapper(**kwargs):
        given = {n: kwargs.pop(n) for n in names}
        return command(**kwargs, method_options={n: v for n, v in given.items() if v is not None})

    wrapper.__signature__ = sig.replace(parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the new signature, not the command's
    return wrapper


def _cli_type(hint) -> type:
    """The command-line type of an option's type hint: int, float, bool or str (Literal choices, checked later)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    return base if base in (int, float, bool) else str


@app.command()
@_with_method_options
def discover(
    model: str | None = typer.Option(None, "--model", "-m", help="Zoo name, local model directory, or hub name."),
    task: str | None = typer.Option(None, "--task", "-t", help="Built-in task name, or a .jsonl / .csv task file."),
    method: str | None = typer.Option(None, help="(the registered methods)"),
    metric: str | None = typer.Option(None, help="logit_diff | prob_diff | logprob | kl | seq_logprob | seq_logit_diff "
                                                      "| a registered name | module:function"),
    ablation: str | None = typer.Option(None, help="resample | zero | mean | mean-positional"),
    n_examples: int | None = typer.Option(None, "--n-examples", help="Number of prompts."),
    seed: int | None = typer.Option(None, help="Random seed (task sampling, search order)."),
    device: str | None = typer.Option(None, help="Torch device, e.g. cpu or cuda:0."),
    dtype: str | None = typer.Option(None, help="float32 | float64 | bfloat16 | float16"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Examples per patched pass (default 32)."),
    processing: str | None = typer.Option(None, help="Weight processing of a Hugging Face model: none (default: the "
                                                     "checkpoint's own function) | fold-ln | transformer-lens."),
    offline: bool = typer.Option(False, "--offline", help="Never try the Hugging Face hub (as HF_HUB_OFFLINE=1)."),
    device_map: str | None = typer.Option(None, "--device-map", help="Place a Hugging Face model with accelerate: auto | "
                                          "balanced | sequential | a JSON object {module: cpu|disk|GPU index}."),
    max_memory: str | None = typer.Option(None, "--max-memory", help="Memory limit: 2GB (main memory) or cpu=2GB,0=10GB. "
                                          "With --device-map, what does not fit goes to disk."),
    offload_folder: str | None = typer.Option(None, "--offload-folder", help="With --device-map: where offloaded weights "
                                              "go (a safetensors checkpoint is read in place)."),
    out: Path = typer.Option(Path("runs/discover"), "--out", "-o", help="Output directory."),
    config: Path | None = typer.Option(None, "--config", help="JSON file with any of these options (method options "
                                       "at the top level or in an \"options\" object)."),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from OUT/checkpoint.json."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished (or interrupted) run in OUT."),
    checkpoint_every: float = typer.Option(60.0, "--checkpoint-every", min=0,
                                           help="Seconds between checkpoints (also saved on Ctrl-C and SIGTERM)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    method_options: dict | None = None,
):
    """Find a circuit and write OUT/circuit.json, circuit.svg, config.json and the run record run.json.

    Method options (--tau, --top-n, ...) come from the method registry; one the method does not use is an error.
    Example: acdc-lite discover --model induction-attn-2l --task induction --method acdc --out runs/acdc
    """
    from acdc_lite.pipeline import DiscoverConfig, discover_into

    def job():
        cfg = DiscoverConfig.resolve(config, model=model, task=task, method=method, metric=metric, ablation=ablation,
                                     n_examples=n_examples, seed=seed, device=device, dtype=dtype, batch_size=batch_size,
                                     processing=processing, offline=offline or None, device_map=device_map,
                                     max_memory=max_memory, offload_folder=offload_folder, **(method_options or {}))
        result = discover_into(out, cfg, resume=resume, force=force, progress=not quiet, checkpoint_interval=checkpoint_every,
                               on_plan=None if quiet else lambda plan: typer.echo(plan.describe(), err=True))
        c = result.circuit
        typer.echo(f"{c.method['name']} on {c.model.name} / {c.task.get('name')}: {len(c.edges)} edges, {len(c.nodes)} nodes, "
                   f"faithfulness {_number(c.metrics['faithfulness'])} on {c.method['metric']} ({c.ablation} ablation), "
                   f"{c.cost['seconds']:.1f} s, {c.cost['search_forward_passes']:.0f} forward passes"
                   + (f" and {c.cost['backward_passes']:.0f} backward" if c.cost.get("backward_passes") else "")
                   + f" (+ {c.cost['bookkeeping_forward_passes']:.0f} bookkeeping)")
        if result.svg_problem:
            typer.echo(f"note: no SVG written ({result.svg_problem})", err=True)
        typer.echo(f"wrote {out}/: circuit.json, {'circuit.svg, ' if result.svg else ''}config.json, run.json")
        return Path(out) / "run.json"

    _guard(job)


@app.command()
def validate(
    circuit: Path = typer.Argument(..., help="A circuit.json file."),
    model: str | None = typer.Option(None, "--model", "-m", help="Default: the circuit's model, found again from its file."),
    task: str | None = typer.Option(None, "--task", "-t", help="Default: the circuit's task, found again from its file."),
    n_examples: int | None = typer.Option(None, "--n-examples", help="Default: as many as the circuit was found with."),
    seed: int | None = typer.Option(None, help="Task sampling and random-baseline seed (default: the circuit's)."),
    processing: str | None = typer.Option(None, help="Weight processing: none | fold-ln | transformer-lens "
                                                     "(default: the circuit's)."),
    offline: bool = typer.Option(False, "--offline", help="Never try the Hugging Face hub."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the JSON report here (and its run record "
                                    "beside it, OUT with .run.json)."),
    plot: bool = typer.Option(False, "--plot", help="Draw the faithfulness curve, per-example histogram and edge necessity."),
    plot_dir: Path | None = typer.Option(None, "--plot-dir", help="Where --plot writes (default: CIRCUIT's folder/validation)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (--json shows none either)."),
):
    """Check a circuit by ablation: faithfulness, completeness, minimality, curves, random baseline.

    With no options the model and task are found again from the circuit file (local paths relative to it).
    Example: acdc-lite validate runs/discover/circuit.json --json --plot
    """
    def job():
        from acdc_lite.circuit import write_atomic
        from acdc_lite.rerun import rerun
        from acdc_lite.runs import RunRecord, check_output_file, interruptible
        from acdc_lite.validate import validate as run_validate

        if out is not None:
            check_output_file(out)
        settings = {"circuit": str(circuit), "model": model, "task": task, "n_examples": n_examples, "seed": seed,
                    "processing": processing, "offline": offline}
        record = RunRecord(out.parent, "validate", settings, name=out.stem + ".run.json").start() if out else None
        with interruptible():
            r = rerun(circuit, model=model, task=task, n_examples=n_examples, seed=seed, processing=processing,
                      offline=offline or None)
            report = run_validate(r.model, r.task, r.circuit, metric=r.metric, seed=seed or 0,
                                  progress=not (quiet or as_json))
        text = json.dumps(report.to_dict(), indent=1)
        if out is not None:
            write_atomic(out, text + "\n")
            record.finish("finished", report.forward_passes)
        typer.echo(text if as_json else report.summary())
        if plot:
            from acdc_lite.explore.commands import plot_validation

            files = plot_validation(report, plot_dir or circuit.parent / "validation")
            typer.echo("wrote " + ", ".join(str(f) for f in files), err=as_json)
        return record.path if record is not None else None

    _guard(job)


def _roles_file(path: Path | None) -> dict[str, str] | None:
    """{node: role} from a JSON file (an object of node name -> role), or None when no file is given."""
    if path is None:
        return None
    try:
        roles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"roles file {path}: not a readable JSON file ({e})") from e
    if not isinstance(roles, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in roles.items()):
        raise ValueError(f"roles file {path}: expected a JSON object of node name -> role, e.g. {{\"a1.h0\": \"induction\"}}")
    return roles


def _necessary_edges(report: Path | None) -> frozenset[str]:
    """Edges a `validate --json` report measured as necessary (|necessity| >= its tolerance)."""
    if report is None:
        return frozenset()
    try:
        d = json.loads(report.read_text(encoding="utf-8"))
        m = d["minimality"]
        return frozenset(e for e, v in m["edge_necessity"].items() if v is not None and abs(v) >= m["tol"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"report {report}: not a validation report with minimality (acdc-lite validate CIRCUIT "
                         f"--json --out REPORT) ({type(e).__name__}: {e})") from e


@app.command()
def render(
    circuit: Path = typer.Argument(..., help="A circuit.json file."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output file (default: CIRCUIT with the format's suffix)."),
    fmt: str = typer.Option("svg", "--format", "-f", help="svg | dot | png"),
    level: str = typer.Option("auto", help="edge (q/k/v ports) | node (one edge per pair of components) | auto (node above "
                                           "--merge-above edges)"),
    max_edges: int | None = typer.Option(None, "--max-edges", help="Draw only the strongest N edges (necessary ones always)."),
    merge_above: int = typer.Option(150, "--merge-above", help="With --level auto, draw node-level above this many edges."),
    direction: str = typer.Option("BT", help="BT (input at the bottom) | TB (input at the top)"),
    roles: Path | None = typer.Option(None, "--roles", help="JSON file {node: role}, over the circuit's and the zoo card's."),
    no_roles: bool = typer.Option(False, "--no-roles", help="Draw no roles."),
    detect_roles: bool = typer.Option(False, "--detect-roles", help="Run the head detectors on the circuit's model "
                                      "and task (for circuits saved without roles; discover stores them)."),
    model: str | None = typer.Option(None, "--model", "-m", help="With --detect-roles: the model (default: the circuit's)."),
    report: Path | None = typer.Option(None, "--report", help="A `validate --json` report: its necessary edges are never faded."),
):
    """Draw a circuit. Example: acdc-lite render runs/discover/circuit.json -o circuit.svg --level node"""
    def job():
        from acdc_lite.circuit import Circuit
        from acdc_lite.render import display_roles, render_file

        if max_edges is not None and max_edges < 1:
            raise ValueError(f"--max-edges must be at least 1, got {max_edges}")
        c = Circuit.load(circuit)
        if detect_roles:
            from acdc_lite.pipeline import with_detected_roles
            from acdc_lite.rerun import rerun

            r = rerun(circuit, model=model)
            r.circuit.check_model(r.model)
            c = with_detected_roles(c, r.model, r.task)
        drawn_roles = {} if no_roles else {**display_roles(c), **(_roles_file(roles) or {})}
        path = render_file(c, out or circuit.with_suffix("." + fmt), fmt, roles=drawn_roles, level=level, max_edges=max_edges,
                           merge_above=merge_above, direction=direction, necessary=_necessary_edges(report))
        typer.echo(f"wrote {path}")

    _guard(job)


@app.command()
def diff(
    a: Path = typer.Argument(..., help="First circuit.json."),
    b: Path = typer.Argument(..., help="Second circuit.json (same or another model)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the drawing of the difference (SVG) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    roles_a: Path | None = typer.Option(None, "--roles-a", help="JSON file {node: role} for A (default: A's own roles)."),
    roles_b: Path | None = typer.Option(None, "--roles-b", help="JSON file {node: role} for B (default: B's own roles)."),
):
    """Compare two circuits, of one model or of two; roles label the drawing and align heads across models.

    Example: acdc-lite diff runs/a/circuit.json runs/b/circuit.json -o d.svg
    """
    def job():
        from acdc_lite.circuit import write_atomic
        from acdc_lite.diff import diff as run_diff

        d = run_diff(a, b, roles_a=_roles_file(roles_a), roles_b=_roles_file(roles_b))
        if out is not None:
            write_atomic(out, d.to_svg())
        summary = d.to_dict()
        typer.echo(d.to_json() if as_json else "\n".join(f"{k}: {v}" for k, v in summary.items() if not isinstance(v, (list, dict))))

    _guard(job)


@app.command("export")
def export_cmd(
    circuit: Path = typer.Argument(..., help="A circuit.json file."),
    fmt: str = typer.Option(..., "--format", "-f", help="eap-json | eap-pt | mib | auto-circuit | circuit-tracer | safetensors "
                                                        "| graphml | csv"),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (a folder for mib, and optionally for circuit-tracer)."),
    mib_task: str | None = typer.Option(None, "--mib-task", help="mib: MIB task name (ioi, mcqa, arithmetic-addition, ...)."),
    mib_model: str | None = typer.Option(None, "--mib-model", help="mib: MIB model name (gpt2, qwen2.5, gemma2, llama3)."),
    mib_file: str = typer.Option("json", "--mib-file", help="mib: json | pt"),
    several: bool = typer.Option(False, "--several", help="mib: nine circuits at 0.1-50%% of the edges instead of one importance file."),
):
    """Write a circuit in another tool's format. Example: acdc-lite export runs/a/circuit.json --format eap-json -o graph.json"""
    def job():
        from acdc_lite.circuit import Circuit
        from acdc_lite.interop import export_circuit, get_format

        get_format(fmt)
        mib_options = {"mib-task": mib_task, "mib-model": mib_model}
        if fmt == "mib":
            missing = [f"--{k}" for k, v in mib_options.items() if v is None]
            if missing:
                raise ValueError(f"--format mib needs {' and '.join(missing)} (MIB's task and model names, e.g. --mib-task ioi "
                                 "--mib-model gpt2)")
        else:
            given = [f"--{k}" for k, v in mib_options.items() if v is not None] + (["--several"] if several else [])
            if given:
                raise ValueError(f"{', '.join(given)} only apply to --format mib")
        c = Circuit.load(circuit)
        options = {"task": mib_task, "model": mib_model, "fmt": mib_file, "several": several} if fmt == "mib" else {}
        written = export_circuit(c, out, fmt, **options)
        for path in written if isinstance(written, list) else [written]:
            typer.echo(f"wrote {path}")

    _guard(job)


@app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., help="A file in another tool's format."),
    fmt: str = typer.Option(..., "--format", "-f", help="eap-json | eap-pt | auto-circuit | safetensors | graphml | csv"),
    out: Path = typer.Option(..., "--out", "-o", help="The circuit.json to write."),
    like: Path | None = typer.Option(None, "--like", help="A circuit.json of the same model: its model description is used "
                                                          "(needed for auto-circuit files and CSV without our header)."),
    top_n: int | None = typer.Option(None, "--top-n", help="auto-circuit: keep the N edges with the largest |score| "
                                                           "(default: every nonzero score)."),
):
    """Read a circuit from another tool's format. Example: acdc-lite import graph.json --format eap-json -o circuit.json"""
    def job():
        from acdc_lite.circuit import Circuit
        from acdc_lite.interop import import_circuit

        if top_n is not None and fmt != "auto-circuit":
            raise ValueError("--top-n only applies to --format auto-circuit")
        if top_n is not None and top_n < 1:
            raise ValueError(f"--top-n must be at least 1, got {top_n}")
        options = {}
        if like is not None:
            options["model"] = Circuit.load(like).model
        if fmt == "auto-circuit":
            if like is None:
                raise ValueError("auto-circuit files hold scores only: give --like CIRCUIT (a circuit of the same model)")
            options["top_n"] = top_n
        c = import_circuit(source, fmt, **options)
        c.save(out)
        typer.echo(f"wrote {out}: {len(c.edges)} edges of a {c.model.n_layers}-layer, {c.model.n_heads}-head model")

    _guard(job)


def _explore_inputs(model: str | None, task: str | None, circuit: Path | None, n_examples: int | None, seed: int | None):
    """(model, task, circuit or None): from the options, else from the circuit, else the discover defaults."""
    from acdc_lite.models import load_model
    from acdc_lite.pipeline import DEFAULT_MODEL, DEFAULT_TASK
    from acdc_lite.rerun import rerun
    from acdc_lite.task import load_task

    if circuit is not None:
        r = rerun(circuit, model=model, task=task, n_examples=n_examples, seed=seed)
        return r.model, r.task, r.circuit
    hooked = load_model(model or DEFAULT_MODEL)
    return hooked, load_task(task or DEFAULT_TASK, hooked, n_examples=n_examples or 64, seed=seed or 0), None


def _explore_record(out: Path, command: str, loaded_model, loaded_task, files, **settings) -> Path:
    """Write OUT/run.json for an explore command that wrote `files` (its time counted from the command's start)."""
    from acdc_lite.runs import RunRecord

    run = {"model": settings.get("model"), "task": settings.get("task"), "method": command}
    if loaded_model is not None:
        from acdc_lite.shape import model_info

        run = {"model": model_info(loaded_model).name, "task": loaded_task.name, "method": command}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
    names = sorted({Path(f).relative_to(out).as_posix() if Path(f).is_relative_to(out) else str(f) for f in files})
    return RunRecord(out, command, settings).start(since=STATE.get("started")).finish("finished", outputs=names, run=run)


_EXPLORE_MODEL = typer.Option(None, "--model", "-m", help="Zoo name, local model directory or hub name (default: the "
                              "circuit's, else discover's default).")
_EXPLORE_TASK = typer.Option(None, "--task", "-t", help="Built-in task name or a JSONL file (default: the circuit's).")
_EXPLORE_N = typer.Option(None, "--n-examples", help="Number of prompts (default 64, or the circuit's).")
_EXPLORE_SEED = typer.Option(None, help="Task sampling seed (default 0, or the circuit's).")


@explore_app.command("heads")
def explore_heads(
    model: str | None = _EXPLORE_MODEL, task: str | None = _EXPLORE_TASK, n_examples: int | None = _EXPLORE_N,
    seed: int | None = _EXPLORE_SEED,
    prompts: str = typer.Option("0,1", help="Comma-separated prompt indices for the attention figures."),
    html: bool = typer.Option(True, "--html/--no-html", help="Interactive attention pages (needs circuitsvis)."),
    out: Path = typer.Option(Path("runs/explore"), "--out", "-o", help="Output directory."),
):
    """Head detectors (scores, roles, attention patterns) into OUT with an index.

    Example: acdc-lite explore heads --model ioi-attn-2l --task ioi --out runs/heads
    """
    def job():
        from acdc_lite.explore.views import write_heads

        try:
            chosen = tuple(int(p) for p in prompts.split(",") if p.strip())
        except ValueError as e:
            raise ValueError(f"--prompts must be comma-separated integers, got {prompts!r}") from e
        hooked, t, _ = _explore_inputs(model, task, None, n_examples, seed)
        paths = write_heads(hooked, t, out, prompts=chosen, html=html)
        typer.echo(f"wrote {len(paths)} files; see {paths[-1]}")
        return _explore_record(out, "explore heads", hooked, t, paths, model=model, task=task, n_examples=n_examples,
                               seed=seed, prompts=prompts, html=html)

    _guard(job)


@explore_app.command("lens")
def explore_lens(
    model: str | None = _EXPLORE_MODEL, task: str | None = _EXPLORE_TASK, n_examples: int | None = _EXPLORE_N,
    seed: int | None = _EXPLORE_SEED,
    circuit: Path | None = typer.Option(None, "--circuit", "-c", help="Attribute to this circuit's components."),
    metric: str | None = typer.Option(None, help="Lens metric (default: logit_diff, or logprob with no foils)."),
    out: Path = typer.Option(Path("runs/explore"), "--out", "-o", help="Output directory."),
):
    """Logit lens across layers and direct logit attribution per component into OUT with an index.

    Example: acdc-lite explore lens --model induction-gpt2-2l --task induction --out runs/lens
    """
    def job():
        from acdc_lite.explore.views import write_lens

        hooked, t, c = _explore_inputs(model, task, circuit, n_examples, seed)
        paths = write_lens(hooked, t, out, circuit=c, metric=metric)
        typer.echo(f"wrote {len(paths)} files; see {paths[-1]}")
        return _explore_record(out, "explore lens", hooked, t, paths, model=model, task=task, n_examples=n_examples,
                               seed=seed, circuit=circuit, metric=metric)

    _guard(job)


@explore_app.command("neurons")
def explore_neurons(
    model: str | None = _EXPLORE_MODEL, task: str | None = _EXPLORE_TASK, n_examples: int | None = _EXPLORE_N,
    seed: int | None = _EXPLORE_SEED,
    mlp: list[str] = typer.Option([], "--mlp", help="MLP to view (m0, m1, ...; repeatable). Default: the circuit's "
                                  "MLPs, else the last layer's."),
    circuit: Path | None = typer.Option(None, "--circuit", "-c", help="View this circuit's MLPs."),
    top_k: int = typer.Option(10, "--top-k", help="Neurons to patch exactly and list."),
    out: Path = typer.Option(Path("runs/explore"), "--out", "-o", help="Output directory."),
):
    """Top neurons of MLPs by effect on the metric, with their top-activating prompts, into OUT with an index.

    Example: acdc-lite explore neurons --model induction-gpt2-2l --task induction --mlp m1 --out runs/neurons
    """
    def job():
        from acdc_lite.explore.views import write_neurons

        if top_k < 1:
            raise ValueError(f"--top-k must be at least 1, got {top_k}")
        hooked, t, c = _explore_inputs(model, task, circuit, n_examples, seed)
        paths = write_neurons(hooked, t, out, mlps=mlp or None, circuit=c, top_k=top_k)
        typer.echo(f"wrote {len(paths)} files; see {paths[-1]}")
        return _explore_record(out, "explore neurons", hooked, t, paths, model=model, task=task, n_examples=n_examples,
                               seed=seed, mlp=mlp, circuit=circuit, top_k=top_k)

    _guard(job)


@app.command()
def benchmark(
    suite: str = typer.Argument("zoo", help="zoo | tracr | gpt2 | scale | memory"),
    out: Path = typer.Option(Path("benchmarks"), "--out", "-o", help="Directory for SUITE.md and SUITE.csv."),
    seed: int = typer.Option(0, help="Task sampling seed."),
    methods: str | None = typer.Option(None, help="Comma-separated methods (default: the suite's)."),
):
    """Run the search methods on a ground-truth suite and write a results table (markdown + CSV).

    Example: acdc-lite benchmark zoo --out benchmarks
    """
    def job():
        from acdc_lite.benchmark import SUITES, write_table

        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
        kwargs = {"methods": methods.split(",")} if methods else {}
        rows = SUITES[suite](seed=seed, **kwargs)
        notes = [f"Written by `acdc-lite benchmark {suite}` ({SUITES[suite].__doc__.splitlines()[0]})",
                 "Columns: see the module docstring of acdc_lite/benchmark.py."]
        md, csv = write_table(rows, out, suite, f"Benchmark: {suite}", notes)
        typer.echo(f"wrote {md} and {csv}")

    _guard(job)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="Sweep config (.json, .yaml or .toml): tasks, models, methods with their "
                                  "options, seeds, settings, backend."),
    out: Path = typer.Option(Path("runs/sweep"), "--out", "-o", help="Sweep folder: cells/CELL run folders, results.csv, "
                             "results.md."),
    backend: str | None = typer.Option(None, help="local | ray | slurm (default: the config's, else local)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Cells at once (default: the config's, else 1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Run a grid of discover runs (tasks x models x methods x seeds); finished cells are never recomputed.

    Example: acdc-lite sweep grid.yaml --out runs/grid --backend local --workers 2
    """
    def job():
        from acdc_lite.sweep import read_sweep_config, run_sweep

        cfg = read_sweep_config(config, backend=backend, workers=workers)
        result = run_sweep(cfg, out, progress=not quiet)
        md, csv = result.table
        typer.echo(f"{len(result.rows)} cells: {result.computed} run now, {result.reused} finished earlier, "
                   f"{len(result.failed)} failed; wrote {md} and {csv}")
        for row in result.failed:
            typer.echo(f"failed: {row['cell']}: {row['error']}", err=True)
        if result.failed:
            raise typer.Exit(1)

    _guard(job)


@explore_app.command("patch")
def explore_patch(
    model: str = typer.Option("induction-attn-2l", "--model", "-m", help="Zoo name, local model directory, or hub name."),
    task: str | None = typer.Option(None, "--task", "-t", help="Built-in task or JSONL file (default: a zoo model's task)."),
    out: Path = typer.Option(Path("runs/explore"), "--out", "-o", help="Output directory."),
    kinds: str | None = typer.Option(None, "--kinds", help="Comma-separated: resid_pre, attn_out, mlp_out, head_out, "
                                     "head_q, head_k, head_v, head_pattern (default: all)."),
    direction: str = typer.Option("both", help="both | denoise (clean into corrupt) | noise (corrupt into clean)"),
    metric: str | None = typer.Option(None, help="Default: the task's."),
    n_examples: int = typer.Option(64, "--n-examples", help="Number of prompts."),
    seed: int = typer.Option(0, help="Task sampling seed."),
):
    """Activation-patching sweeps: heatmaps (PNG, SVG), CSV tables and OUT/index.md.

    Example: acdc-lite explore patch --model ioi-attn-2l --task ioi --kinds resid_pre,head_out --out runs/patch
    """
    def job():
        from acdc_lite.explore.commands import run_patch

        files = run_patch(model, task, out, kinds=kinds, direction=direction, metric=metric, n_examples=n_examples, seed=seed)
        typer.echo(f"wrote {len(files)} files into {out} (see {out / 'index.md'})")
        return _explore_record(out, "explore patch", None, None, files, model=model, task=task, kinds=kinds,
                               direction=direction, metric=metric, n_examples=n_examples, seed=seed)

    _guard(job)


@explore_app.command("paths")
def explore_paths(
    model: str | None = typer.Option(None, "--model", "-m", help="Default: the circuit's model."),
    task: str | None = typer.Option(None, "--task", "-t", help="Default: the circuit's (or a zoo model's) task."),
    circuit: Path | None = typer.Option(None, "--circuit", "-c", help="A circuit.json: one row per edge of it."),
    edge: list[str] = typer.Option([], "--edge", "-e", help="An edge name (repeatable), e.g. a0.h3->a1.h0<k>."),
    out: Path = typer.Option(Path("runs/paths"), "--out", "-o", help="Output directory."),
    ablation: str | None = typer.Option(None, help="resample | zero | mean | mean-positional (default: the circuit's)."),
    metric: str | None = typer.Option(None, help="Default: the circuit's or the task's."),
    n_examples: int = typer.Option(64, "--n-examples", help="Number of prompts."),
    seed: int = typer.Option(0, help="Task sampling seed."),
):
    """Path patching: each edge's effect as a share of the clean-corrupt gap (CSV, bars, OUT/index.md).

    Example: acdc-lite explore paths --circuit runs/default/circuit.json --out runs/paths
    """
    def job():
        from acdc_lite.explore.commands import run_paths

        files = run_paths(model, task, out, circuit=circuit, edges=edge, ablation=ablation, metric=metric,
                          n_examples=n_examples, seed=seed)
        typer.echo(f"wrote {len(files)} files into {out} (see {out / 'index.md'})")
        return _explore_record(out, "explore paths", None, None, files, model=model, task=task, circuit=circuit, edge=edge,
                               ablation=ablation, metric=metric, n_examples=n_examples, seed=seed)

    _guard(job)


@zoo_app.command("list")
def zoo_list():
    """List shipped models with their ground-truth heads. Example: acdc-lite zoo list"""
    from acdc_lite import zoo

    for name in zoo.names():
        card = zoo.card(name)
        heads = ", ".join(f"{h.get('node', h.get('head'))} ({h['class']})" for h in card.get("ground_truth", []))
        typer.echo(f"{name:24s} {heads}")


@zoo_app.command("train")
def zoo_train(name: str, seed: int = typer.Option(0, help="Training seed."),
              out: Path | None = typer.Option(None, help="Write here instead of the package's zoo directory.")):
    """Re-train a zoo model. Example: acdc-lite zoo train induction-attn-2l"""
    def job():
        from acdc_lite.zoo import ZOO_DIR, train

        path = out or ZOO_DIR / name
        _, card = train.train(name, seed=seed, out_dir=path)
        heads = ", ".join(f"{h.get('node', h.get('head'))} ({h['class']})" for h in card.get("ground_truth", []))
        typer.echo(f"wrote {path}; ground-truth heads: {heads}")

    _guard(job)


@tasks_app.command("list")
def tasks_list():
    """List built-in tasks. Example: acdc-lite tasks list"""
    from acdc_lite.tasks import descriptions

    for name, description in descriptions().items():
        typer.echo(f"{name:14s} {description}")


@app.command()
def version():
    """Print the version. Example: acdc-lite version"""
    typer.echo(_version_text())


# ---- below the component level: dictionaries, probes; past runs ----------------------------------
sae_app = typer.Typer(no_args_is_help=True, help="Sparse dictionaries (autoencoders, transcoders) on a model's activations.")
app.add_typer(sae_app, name="sae")


@sae_app.command("train")
def sae_train(
    model: str | None = typer.Option(None, "--model", "-m", help="Zoo name, local model directory or hub name "
                                     "(default: induction-attn-2l)."),
    task: str | None = typer.Option(None, "--task", "-t", help="Built-in task or task file (default: a zoo model's task)."),
    site: str = typer.Option("a1.h0", "--site", "-s", help="a1.h0 (a head's result), m0 (an MLP's output), input, "
                             "'resid L', or a hook name."),
    transcoder: bool = typer.Option(False, "--transcoder", help="Map the MLP's input to its output (an MLP site)."),
    n_latents: int = typer.Option(96, "--n-latents", help="Dictionary size."),
    k: int = typer.Option(3, "--k", help="Active latents per position (TopK)."),
    steps: int = typer.Option(1500, "--steps", help="Adam steps."),
    batch_size: int = typer.Option(512, "--batch-size", help="Activations per step."),
    lr: float = typer.Option(2e-3, "--lr", help="Adam learning rate."),
    holdout: float = typer.Option(0.3, "--holdout", help="Share of examples held out for every reported number."),
    n_examples: int = typer.Option(3000, "--n-examples", help="Task examples (training and held out)."),
    seed: int = typer.Option(0, help="Task sampling, split, initialisation and batch seed."),
    tokens: Path | None = typer.Option(None, "--tokens", help="Train on this text file (tokenised by the model's tokenizer) "
                                       "instead of the task's prompts; the task's held-out prompts still measure it."),
    window: int | None = typer.Option(None, "--window", help="With --tokens: tokens per window (default: the task's "
                                      "prompt length)."),
    edge: str | None = typer.Option(None, "--edge", "-e", help="A circuit edge leaving the site's node, e.g. a1.h0->logits: "
                                    "find the feature for --variable and its share of the edge's effect."),
    variable: str | None = typer.Option(None, "--variable", help="With --edge: answer (default) | carry | foil."),
    value: int | None = typer.Option(None, "--value", help="With --edge: the variable's value to study (default: the one "
                                     "the edge carries most on training examples)."),
    out: Path = typer.Option(Path("runs/sae"), "--out", "-o", help="Output directory."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished run in OUT."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted training from OUT/checkpoint.safetensors."),
    checkpoint_every: float = typer.Option(60.0, "--checkpoint-every", min=0,
                                           help="Seconds between training checkpoints (also saved on Ctrl-C and SIGTERM)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Train a sparse dictionary on one site; report FVU, L0, dead latents and the task metric with it spliced in.

    Example: acdc-lite sae train --model induction-attn-2l --site a1.h0 --edge 'a1.h0->logits' --out runs/sae
    """
    def job():
        from acdc_lite.boundary import UsageError
        from acdc_lite.features.commands import train_sae_into
        from acdc_lite.features.sae import SAEConfig

        if edge is None and (variable is not None or value is not None):
            raise UsageError("--variable and --value only apply with --edge")
        cfg = SAEConfig(site=site, transcoder=transcoder, n_latents=n_latents, k=k, steps=steps, batch_size=batch_size,
                        lr=lr, holdout=holdout, seed=seed)
        report = train_sae_into(out, cfg, model=model, task=task, n_examples=n_examples, edge=edge,
                                variable=variable or "answer", value=value, force=force, resume=resume,
                                checkpoint_interval=checkpoint_every, progress=not quiet, tokens=tokens, window=window)
        r = report["reconstruction"]
        typer.echo(f"{report['site']} of {report['model']}: FVU {r['fvu']:.4f}, L0 {r['l0']:.2f}, dead {r['dead']}/{r['n_latents']}, "
                   f"{r['metric']} {r['metric_model']:.4f} -> {r['metric_spliced']:.4f} spliced ({r['metric_change']:.1%})")
        if "feature" in report:
            h = report["feature"]["headline"]
            typer.echo(f"feature {h['feature']} for {report['feature']['variable']} = {h['value']}: held-out AUROC "
                       f"{h['heldout_auroc']:.3f}, {h['share']:.1%} of {report['feature']['edge']}'s effect "
                       f"(random features: {report['feature']['random_share_mean']:.1%})")
        typer.echo(f"wrote {out}/: dictionary.safetensors, dictionary.json, report.json, report.md, run.json")
        return Path(out) / "run.json"

    _guard(job)


@app.command()
def probe(
    variable: str = typer.Option("answer", "--variable", help="answer (the answer token; induction: the token to be "
                                 "copied) | carry (addition) | foil."),
    model: str | None = typer.Option(None, "--model", "-m", help="Zoo name, local model directory or hub name "
                                     "(default: induction-attn-2l)."),
    task: str | None = typer.Option(None, "--task", "-t", help="Built-in task or task file (default: a zoo model's task)."),
    site: list[str] = typer.Option([], "--site", "-s", help="A site to probe (repeatable; default: every residual stream "
                                   "and, unless --no-heads, every head's output)."),
    heads: bool = typer.Option(True, "--heads/--no-heads", help="Also probe each head's output."),
    n_examples: int = typer.Option(2000, "--n-examples", help="Task examples (train and test)."),
    holdout: float = typer.Option(0.3, "--holdout", help="Share of examples in the test split."),
    c: float = typer.Option(1.0, "--c", help="Inverse L2 regularisation strength of the logistic regression."),
    seed: int = typer.Option(0, help="Task sampling, split and control-label seed."),
    out: Path = typer.Option(Path("runs/probe"), "--out", "-o", help="Output directory."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished run in OUT."),
):
    """Linear probes for a task variable by layer and head, against a shuffled-label control; plot and table in OUT.

    Example: acdc-lite probe --model induction-attn-2l --variable answer --out runs/probe
    """
    def job():
        from acdc_lite.boundary import UsageError
        from acdc_lite.features.commands import probe_into

        if site and not heads:
            raise UsageError("--no-heads only applies without --site (the default sites)")
        d = probe_into(out, variable, model=model, task=task, n_examples=n_examples, sites=site or None, heads=heads,
                       holdout=holdout, seed=seed, c=c, force=force)
        for r in d["rows"]:
            typer.echo(f"{r['site']:12s} accuracy {r['accuracy']:.3f}  control {r['control_accuracy']:.3f}  "
                       f"selectivity {r['selectivity']:+.3f}")
        typer.echo(f"wrote {out}/: probes.csv, probes.png, probes.svg, report.json, report.md, run.json")
        return Path(out) / "run.json"

    _guard(job)


@app.command()
def runs(
    folders: list[Path] = typer.Argument(None, help="Folders holding runs (searched recursively for run.json and "
                                         "NAME.run.json) or run records; default: runs"),
    sort: str | None = typer.Option(None, "--sort", help="Sort by a column: task, model, method, edges, faithfulness, "
                                    "seconds, forward_passes, peak_memory_mb, started, ..."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
):
    """List and compare past runs from their run records (task, model, method, edges, faithfulness, cost).

    Example: acdc-lite runs runs/acdc runs/eap --sort faithfulness
    """
    def job():
        from acdc_lite.boundary import UsageError
        from acdc_lite.ledger import runs_table

        if fmt not in ("table", "csv", "json"):
            raise UsageError(f"unknown --format {fmt!r}; choose table, csv or json")
        frame = runs_table(folders or [Path("runs")], sort=sort)
        if frame.empty:
            typer.echo(f"no run records under {', '.join(str(f) for f in folders or [Path('runs')])}")
            return
        if fmt == "csv":
            typer.echo(frame.to_csv(index=False), nl=False)
        elif fmt == "json":
            typer.echo(frame.to_json(orient="records", indent=1))
        else:
            shown = frame.drop(columns=[c for c in ("started",) if c in frame]).fillna("")
            typer.echo(shown.to_string(index=False))

    _guard(job)
