"""`Validator`: what to measure about a circuit and how, decided once; `run(model, task, circuit)` measures it.

The metric, ablation and batch size default to the circuit's own (the settings its search recorded), so the
faithfulness reported is the one `discover` printed, on the same metric. Nothing mutates the model, task or
circuit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from acdc_lite.circuit import Circuit, CircuitError, ModelRef
from acdc_lite.faithfulness import faithfulness, gap_is_zero
from acdc_lite.patching import Ablation, EdgePatcher, ablated_outputs, eval_mode
from acdc_lite.task import Task
from acdc_lite.validate.baseline import random_baseline
from acdc_lite.validate.bootstrap import stability
from acdc_lite.validate.curves import MIB_FRACTIONS, faithfulness_curve
from acdc_lite.validate.necessity import minimality
from acdc_lite.validate.passes import per_example, per_example_metrics
from acdc_lite.validate.report import ValidationReport
from acdc_lite.validate.truth import ground_truth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validator:
    """The settings of a validation. None means 'the circuit's own' (ablation, metric, batch_size).

    check_minimality: each edge's necessity (at most `max_minimality_edges`, |necessity| < `minimality_tol` is
    useless). curve: the faithfulness curve at `fractions` of all edges (CPR, CMD). random_seeds: random circuits of
    the same size (0 skips). n_bootstrap: resamples for stability when `run` gets a search. check_weights: refuse a
    model whose weights differ from the circuit's (the shape is always checked). candidates: masks per batched pass
    (C x batch_size sequences at once; lower both for big models). seed: sampling of minimality and baselines.
    """

    ablation: Ablation | str | None = None
    metric: str | None = None
    batch_size: int | None = None
    check_minimality: bool = True
    max_minimality_edges: int = 256
    minimality_tol: float = 0.01
    curve: bool = True
    fractions: Sequence[float] = MIB_FRACTIONS
    random_seeds: int = 5
    n_bootstrap: int = 5
    check_weights: bool = True
    candidates: int = 8
    seed: int = 0
    progress: bool = True

    def run(self, model: nn.Module, task: Task, circuit: Circuit, *, curve_scores: torch.Tensor | None = None,
            search: Callable[[Task], Circuit] | None = None, reference: Circuit | None = None) -> ValidationReport:
        """Validate `circuit` on `model` and `task`. curve_scores: [S, R] ranking for the curve (default the circuit's
        scores); search: `(task) -> Circuit`, re-run on bootstrap resamples for stability; reference: a reference
        circuit for ROC AUC and precision/recall."""
        started = time.perf_counter()
        notes: list[str] = []
        self._check_model(model, circuit)
        ablation, metric_name, batch_size = self._settings(circuit, task, notes)
        graph = circuit.graph
        circuit_mask = circuit.mask()
        if not graph.is_tied(circuit_mask):
            circuit_mask = graph.tie(circuit_mask)
            _note(notes, f"the circuit keeps some but not all k/v edges of a k/v group (grouped-query attention); "
                         f"validated with those groups' k/v edges kept whole ({int(circuit_mask.sum())} edges)")
        with torch.no_grad(), eval_mode(model):
            metric_fn = task.metric(metric_name, model=model)
            kl_fn = task.metric("kl", model=model)
            ablated = ablated_outputs(model, graph, task.corrupt, ablation, batch_size, task.attention_mask)
            patcher = EdgePatcher(model, graph, task.clean, ablated, batch_size, task.attention_mask)
            report = self._base(patcher, metric_fn, kl_fn, circuit, circuit_mask, task, ablation, metric_name)
            full, empty, circ = report["metric_full"], report["metric_empty"], report["metric_circuit"]
            if self.check_minimality and circuit.edges:
                report["minimality"] = minimality(patcher, metric_fn, circuit_mask, circ, full - empty,
                                                  self.max_minimality_edges, self.minimality_tol, self.candidates,
                                                  self.seed, progress=self.progress)
            if self.curve:
                report.update(self._curves(patcher, metric_fn, curve_scores, circuit, full, empty, notes))
            if self.random_seeds > 0:
                report["random_baseline"] = random_baseline(patcher, metric_fn, kl_fn, len(circuit.edges), full, empty,
                                                            self.random_seeds, self.seed, self.candidates, self.progress)
        if search is not None and self.n_bootstrap > 0:
            report["stability"] = stability(task, search, self.n_bootstrap, self.seed, circuit, self.progress)
        if reference is not None:
            report["ground_truth"] = ground_truth(reference, curve_scores, circuit)
        result = ValidationReport(**report, forward_passes=round(patcher.forward_passes, 3),
                                  seconds=round(time.perf_counter() - started, 3), notes=notes)
        log.info("validated %s: faithfulness %.3f, completeness %.3f", circuit.model.name, result.faithfulness,
                 result.completeness)
        return result

    def _check_model(self, model: nn.Module, circuit: Circuit) -> None:
        if self.check_weights:
            circuit.check_model(model)
        elif ModelRef.of(model).graph() != circuit.graph:
            raise CircuitError(f"circuit is for a {circuit.model.n_layers} x {circuit.model.n_heads} graph; "
                               "this model has a different shape")

    def _settings(self, circuit: Circuit, task: Task, notes: list[str]) -> tuple[Ablation, str, int]:
        """(ablation, metric, batch size): given, else the circuit's recorded ones, else the task's metric and 32."""
        ablation = Ablation(self.ablation or circuit.ablation)
        if ablation.value != circuit.ablation:
            _note(notes, f"validated with {ablation.value} ablation; the circuit was found with {circuit.ablation}")
        recorded = circuit.method if isinstance(circuit.method, dict) else {}
        metric = self.metric or recorded.get("metric") or task.default_metric
        if recorded.get("metric") and metric != recorded["metric"]:
            _note(notes, f"validated on {metric}; the circuit was found on {recorded['metric']}")
        return ablation, metric, self.batch_size or int(recorded.get("batch_size") or 32)

    def _base(self, patcher: EdgePatcher, metric_fn, kl_fn, circuit: Circuit, circuit_mask: torch.Tensor, task: Task,
              ablation: Ablation, metric_name: str) -> dict:
        """Faithfulness, completeness, KL and the per-example distribution: full, empty, circuit, complement in one pass."""
        graph = circuit.graph
        base = torch.stack([graph.full_mask(), graph.empty_mask(), circuit_mask, graph.valid & ~circuit_mask])
        out = per_example_metrics(patcher, base, {"metric": metric_fn, "kl": kl_fn})
        m, kl = out["metric"], -out["kl"]  # [4, N]
        full, empty, circ, comp = (float(x) for x in m.mean(1))
        if gap_is_zero(full, empty):
            raise ValueError(f"the full and the ablated model give the same {metric_name} ({full:.4g}); faithfulness "
                             "is undefined. Check that the corrupted prompts change the behaviour")
        return dict(
            task=task.name, model=circuit.model.name, method=str(circuit.method.get("name", "")), ablation=ablation.value,
            metric=metric_name, n_examples=len(task), n_edges=len(circuit.edges),
            n_nodes=len(circuit.nodes), n_edges_total=graph.n_edges(), metric_full=full, metric_empty=empty,
            metric_circuit=circ, metric_complement=comp, faithfulness=faithfulness(circ, full, empty),
            completeness=faithfulness(comp, full, empty), kl_circuit=float(kl[2].mean()), kl_empty=float(kl[1].mean()),
            kl_complement=float(kl[3].mean()), per_example=per_example(m, abs(full - empty)),
        )

    def _curves(self, patcher, metric_fn, scores, circuit: Circuit, full: float, empty: float, notes: list[str]) -> dict:
        """The signed-ranking curve (CPR) and the |score|-ranking curve (CMD); none without scores."""
        graph = circuit.graph
        scores = scores if scores is not None else circuit.score_tensor()
        if torch.isnan(scores[graph.valid]).all():
            notes.append("no edge scores: faithfulness curve skipped")
            return {}
        signed = faithfulness_curve(patcher, metric_fn, scores, full, empty, self.fractions, False,
                                    candidates=self.candidates, progress=self.progress)
        if not (scores[graph.valid] < 0).any():
            return {"curve": signed, "curve_abs": signed}
        absolute = faithfulness_curve(patcher, metric_fn, scores, full, empty, self.fractions, True,
                                      candidates=self.candidates, progress=self.progress)
        return {"curve": signed, "curve_abs": absolute}


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    log.warning(text)


def validate(model: nn.Module, task: Task, circuit: Circuit, ablation: Ablation | str | None = None,
             metric: str | None = None, *, check_minimality: bool = True, max_minimality_edges: int = 256,
             minimality_tol: float = 0.01, curve: bool = True, curve_scores: torch.Tensor | None = None,
             fractions: Sequence[float] = MIB_FRACTIONS, random_seeds: int = 5,
             search: Callable[[Task], Circuit] | None = None, n_bootstrap: int = 5,
             reference: Circuit | None = None, check_weights: bool = True, batch_size: int | None = None,
             candidates: int = 8, seed: int = 0, progress: bool = True) -> ValidationReport:
    """`Validator(...).run(model, task, circuit, ...)` in one call; see `Validator` for every argument."""
    validator = Validator(ablation=ablation, metric=metric, batch_size=batch_size, check_minimality=check_minimality,
                          max_minimality_edges=max_minimality_edges, minimality_tol=minimality_tol, curve=curve,
                          fractions=tuple(fractions), random_seeds=random_seeds, n_bootstrap=n_bootstrap,
                          check_weights=check_weights, candidates=candidates, seed=seed, progress=progress)
    return validator.run(model, task, circuit, curve_scores=curve_scores, search=search, reference=reference)
