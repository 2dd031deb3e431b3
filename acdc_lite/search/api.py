"""`search(model, task, method, ...)` -> SearchResult and `discover(...)` -> Circuit: settings decided once, then the
method from the registry (`acdc_lite.search.methods.METHODS`).

A run resolves every setting at its top into one frozen `Settings`: the method's options (built from the
registry: an option the method does not use is an error), the metric (the method's default, else the task's;
KL is refused for gradient methods), the ablation, and tau (auto tau measured from m(full) and m(empty)).
A metric that does not separate the full from the ablated model is refused before any search. The settings go
on the SearchResult and into the circuit file, and `validate` reads them back from there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import is_dataclass, replace
from pathlib import Path

import torch
from torch import nn

from acdc_lite.circuit import Circuit, ModelRef
from acdc_lite.faithfulness import finite_or_none, gap_is_zero
from acdc_lite.patching import Ablation
from acdc_lite.runs import Checkpointer
from acdc_lite.search import methods
from acdc_lite.search.common import SearchContext, SearchResult
from acdc_lite.search.spec import MethodSpec, Runtime, SearchError, Settings
from acdc_lite.task import Task

log = logging.getLogger(__name__)

KL_TAU = 0.01  # auto tau on KL, in nats


def default_metric(method: str, task: Task) -> str:
    """The method's own default metric (KL for ACDC: label-free), else the task's."""
    return methods.get(method).default_metric or task.default_metric


def default_tau(spec: MethodSpec, metric: str, metric_full: float, metric_empty: float) -> tuple[float, str]:
    """(tau, how it was decided): 0.01 nats on KL; else the method's share of |m(full) - m(empty)|."""
    if metric == "kl":
        return KL_TAU, f"{KL_TAU} nats (KL)"
    return spec.tau_share * abs(metric_full - metric_empty), f"{spec.tau_share:g} x |m(full) - m(empty)| on {metric}"


def method_options(method: str, options=None, given: dict | None = None):
    """`method`'s options object: `options` (that method's options object, or a dict) or keyword values `given`."""
    spec = methods.get(method)
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if options is None:
        return methods.options_for(method, given)
    if given:
        raise SearchError(f"give {method}'s options either as an options object or as keywords, not both "
                          f"(got options= and {', '.join(given)})")
    if isinstance(options, dict):
        return methods.options_for(method, options)
    if not (is_dataclass(options) and isinstance(options, spec.options)):
        raise SearchError(f"options for {method} must be a {spec.options.__name__} (or a dict), "
                          f"got {type(options).__name__}")
    return options


def check_metric(spec: MethodSpec, metric: str, task: Task) -> None:
    """SearchError when `metric` cannot drive `spec`: KL for a gradient method, accuracy for anything but exact."""
    if metric == "kl" and spec.gradient:
        suggestion = task.default_metric if task.default_metric != "kl" else "logprob" if task.foils is None else "logit_diff"
        raise SearchError(f"{spec.name} needs a task metric: KL has zero gradient at the clean model; use --metric {suggestion}")
    if metric == "accuracy" and (spec.gradient or spec.tau_share is not None):
        raise SearchError("accuracy is not a search metric (flat almost everywhere); use logit_diff, prob_diff, logprob or kl")


def refuse_constant_metric(metric: str, full: float, empty: float) -> None:
    """SearchError when the metric is the same with every edge kept and every edge ablated: any circuit (the empty
    one included) would 'explain' it, so a search result would mean nothing (e.g. KL on a one-output tracr program)."""
    if gap_is_zero(full, empty):
        raise SearchError(f"metric {metric} is {full:.4g} with every edge kept and with every edge ablated: nothing separates "
                          "the clean from the ablated model, so no circuit can be found. Check that the corrupted prompts "
                          "change the answer, or pick another --metric (e.g. l2 or proj for tracr programs)")


def resolve(spec: MethodSpec, options, metric: str, ablation: Ablation, seed: int, batch_size: int,
            metric_full: float | None, metric_empty: float | None, executor: str = "model") -> Settings:
    """The frozen Settings of a run: options' own defaults decided (`resolved()`), auto tau measured (from
    metric_full and metric_empty, which a method without tau need not give); `executor` as `SearchContext.executor`."""
    if hasattr(options, "resolved"):
        options = options.resolved()
    tau_rule = None
    if "tau" in spec.option_names():
        if options.tau is None:
            tau, tau_rule = default_tau(spec, metric, metric_full, metric_empty)
            options = replace(options, tau=tau)
            log.info("tau defaults to %.4g (%s)", tau, tau_rule)
        else:
            tau_rule = "given"
    return Settings(spec.name, options, metric, ablation.value, seed, batch_size, tau_rule, executor)


def search(model: nn.Module, task: Task, method: str = "hybrid", options=None, *, metric: str | None = None,
           ablation: Ablation | str = Ablation.RESAMPLE, seed: int = 0, batch_size: int = 32,
           checkpoint: Checkpointer | str | Path | None = None, progress: bool = True, twin: bool = True,
           **method_opts) -> SearchResult:
    """Run one registered search method; never mutates the model or task.

    options: the method's options object (e.g. `methods.acdc.ACDCOptions(tau=0.01)`) or a dict; or give them as
    keywords (`tau=0.01`). An option the method does not use is a SearchError. checkpoint: a `Checkpointer` (or a
    path: one keyed by these settings) for checkpointable methods. See `discover` for every argument.
    """
    spec = methods.get(method)
    opts = method_options(method, options, method_opts)
    if batch_size < 1:
        raise SearchError(f"batch_size must be at least 1, got {batch_size}")
    try:
        ablation = Ablation(ablation)
    except ValueError:
        raise SearchError(f"unknown ablation {ablation!r}; choose one of {', '.join(a.value for a in Ablation)}") from None
    metric = metric or spec.default_metric or task.default_metric
    check_metric(spec, metric, task)
    if checkpoint is not None and not spec.checkpointable:
        raise SearchError(f"{method} does not checkpoint (it is one quick pass); run it without a checkpoint")
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        model.eval()
        ctx = SearchContext.build(model, task, metric, ablation, batch_size, twin=twin)
        if not spec.gqa and ctx.graph.kv_group > 1:
            raise SearchError(f"{method} does not support grouped-query attention; use one of "
                              f"{', '.join(n for n, s in methods.METHODS.items() if s.gqa)}")
        full = empty = None
        if "tau" in spec.option_names() or not spec.gradient:
            full, empty = ctx.reference()
            refuse_constant_metric(metric, full, empty)  # before any search: nothing would be explained
        settings = resolve(spec, opts, metric, ablation, seed, batch_size, full, empty, ctx.executor)
        if isinstance(checkpoint, (str, Path)):
            flat = {k: v for k, v in settings.to_dict().items() if k != "params"}
            checkpoint = Checkpointer(Path(checkpoint), {**flat, **settings.params})  # a difference names the option
        result = spec.run(ctx, settings.options, Runtime(progress=progress, checkpoint=checkpoint))
        if full is None:  # a score method without tau measured m(full) in its gradient pass: refused after it
            refuse_constant_metric(metric, result.metric_full, result.metric_empty)
    extras = {k: v for k, v in result.params.items() if k not in settings.params}  # e.g. ACDC's speculation batch
    result.params, result.stats = settings.params, {**result.stats, **extras, "executor": settings.executor}
    result.settings, result.bookkeeping = settings, dict(ctx.bookkeeping)
    result.forward_passes, result.backward_passes = ctx.patcher.forward_passes, ctx.patcher.backward_passes
    return result


def to_circuit(model: nn.Module, task: Task, result: SearchResult) -> Circuit:
    """Package a SearchResult as a Circuit: metrics, its Settings under `method`, provenance, and the cost
    (search and bookkeeping passes apart)."""
    from acdc_lite import __version__

    s = result.settings
    if s is None:
        raise ValueError("to_circuit needs a SearchResult from `search` (one that carries its settings)")
    return Circuit.from_mask(
        ModelRef.of(model), result.kept, result.scores, task=task.describe(),
        method={"name": s.method, "params": s.params, "metric": s.metric, "batch_size": s.batch_size,
                "tau_rule": s.tau_rule},
        ablation=s.ablation,
        metrics={k: finite_or_none(v) for k, v in  # NaN (metric blind to the ablation) is stored as null
                 {"faithfulness": result.faithfulness, "metric_full": result.metric_full,
                  "metric_empty": result.metric_empty, "metric_circuit": result.metric_circuit}.items()},
        provenance={"package_version": __version__, "seed": s.seed, "torch_version": torch.__version__,
                    "executor": s.executor},
        cost={"seconds": round(result.seconds, 3), "forward_passes": round(result.forward_passes, 3),
              "search_forward_passes": round(result.search_forward_passes, 3),
              "bookkeeping_forward_passes": round(result.bookkeeping_forward_passes, 3),
              "bookkeeping": {k: round(v, 3) for k, v in result.bookkeeping.items()},
              "backward_passes": round(result.backward_passes, 3)},
    )


def settings_of(circuit: Circuit) -> Settings | None:
    """The Settings a circuit file records (None for a file without them: found before settings were recorded)."""
    m = circuit.method
    if not isinstance(m, dict) or m.get("name") not in methods.METHODS or not isinstance(m.get("params"), dict):
        return None
    try:
        options = methods.options_for(m["name"], m["params"], source="the circuit's method params")
    except SearchError:
        return None  # params of an older version of the method
    return Settings(m["name"], options, m.get("metric") or "", circuit.ablation,
                    int(circuit.provenance.get("seed", 0) or 0), int(m.get("batch_size", 32) or 32), m.get("tau_rule"),
                    str(circuit.provenance.get("executor") or "model"))


def discover(model: nn.Module, task: Task, method: str = "hybrid", *, options=None,
             tau: float | None = None, top_n: int | None = None, threshold: float | None = None,
             target_faithfulness: float | None = None, level: str | None = None, ig_steps: int | None = None,
             include_mlps: bool | None = None, shuffle_seed: int | None = None, plain_acdc: bool | None = None,
             metric: str | None = None, ablation: Ablation | str = "resample", seed: int = 0, batch_size: int = 32,
             checkpoint: Checkpointer | str | Path | None = None, progress: bool = True, twin: bool = True) -> Circuit:
    """Find a circuit for `task` in `model` and return it as a Circuit.

    method: a registered method (`acdc_lite.search.methods.METHODS`): acdc, head-pruning, hisp, eap, eap-ig, exact,
        hybrid (the default: attribution then ACDC at the boundary).
    options: the method's options object or dict, instead of the keywords below.
    Method options (None = the method's default; giving one the method does not use is a SearchError):
      tau: pruning threshold in metric units (acdc, head-pruning, hisp, hybrid); default 0.01 on KL, else a share of
        |m(full) - m(empty)| (2%, node methods 5%), measured before the search.
      top_n / threshold / target_faithfulness: how eap, eap-ig and exact pick the circuit from their scores: the n best
        edges, the edges with |score| >= threshold, or the smallest top-k reaching that faithfulness (default 0.9).
      level: "edge" or "node" for eap, eap-ig, exact (node: whole nodes ranked by their outgoing scores).
      ig_steps: integrated-gradient steps of eap-ig (default 5) and hybrid (default 4).
      include_mlps: head-pruning and hisp also remove MLPs.
      shuffle_seed: acdc tests each receiver's edges in a seeded random order.
      plain_acdc: hybrid runs plain ACDC where it is predicted cheaper than the attribution (default on).
    metric: the search metric (default: KL for acdc, else the task's); faithfulness is on the same metric.
    ablation: resample (the corrupted prompts), zero, mean or mean-positional.
    seed: torch seed of the run. batch_size: examples per patched pass.
    checkpoint: a path or Checkpointer (acdc, head-pruning, exact, hybrid) to resume an interrupted search.
    progress: show tqdm bars.
    twin: run the patched passes on the model's native twin when it has one (a TransformerBridge around a GPT-2,
        Llama, Mistral or Qwen2: our own SmallTransformer with its weights, checked to compute the same logits and
        sender outputs; faster, same circuit); the circuit's provenance says which executor ran ("native-twin" or
        "model").

    The circuit's `.method` records the resolved settings (validate reads them), `.metrics` the faithfulness, and
    `.cost` seconds and forward passes, search and bookkeeping apart (not saved in the file; see run.json).
    """
    started = time.perf_counter()
    given = {"tau": tau, "top_n": top_n, "threshold": threshold, "target_faithfulness": target_faithfulness,
             "level": level, "ig_steps": ig_steps, "include_mlps": include_mlps, "shuffle_seed": shuffle_seed,
             "plain_acdc": plain_acdc}
    result = search(model, task, method, options, metric=metric, ablation=ablation, seed=seed, batch_size=batch_size,
                    checkpoint=checkpoint, progress=progress, twin=twin, **given)
    result.seconds = time.perf_counter() - started
    return to_circuit(model, task, result)
