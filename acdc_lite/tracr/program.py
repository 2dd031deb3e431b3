"""A compiled tracr program (`TracrProgram`): our model, tracr's, the ground truth, tasks and their metrics."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from acdc_lite.circuit import Circuit
from acdc_lite.task import Task, TaskError
from acdc_lite.transformer import SmallTransformer

METHOD = "tracr-ground-truth"
COMPILER_PAD = "compiler_pad"
ONE = "one"  # tracr's constant direction, 1 at every position (written by the token embedding)
SELECTOR_WIDTH_SUFFIX = "_selector_width_attn_output"  # tracr's hidden direction between a selector-width head and its MLP


class TracrUnavailable(ImportError):
    """tracr is not installed."""


def rasp_module():
    """tracr's `rasp` module, or TracrUnavailable saying how to install it."""
    try:
        from tracr.rasp import rasp
    except ImportError as e:
        raise TracrUnavailable("tracr is not installed; install it with `pip install 'acdc-lite[tracr]'` "
                               "(the tracr-pypi package, with jax on CPU)") from e
    return rasp



@dataclass(frozen=True)
class TracrProgram:
    """A compiled program: our model, tracr's model, the ground truth and how to make tasks.

    vocab: input token values in id order (with BOS and pad); output_values: categorical output values
    in logit order, None for a numerical output; directions: ground-truth edge -> residual directions
    it carries.
    """

    name: str
    model: SmallTransformer
    ground_truth: Circuit
    vocab: tuple
    bos: str
    output_values: tuple | None
    residual_labels: tuple[str, ...]
    max_seq_len: int
    seq_len: int  # tokens after BOS in `make_task` inputs
    unique_inputs: bool  # task inputs without repeated tokens (permutations)
    default_examples: int
    directions: dict[str, tuple[str, ...]]
    assembled: Any = field(repr=False, compare=False)  # tracr's AssembledTransformerModel

    @property
    def categorical(self) -> bool:
        return self.output_values is not None

    @property
    def input_values(self) -> list:
        """Token values a program input may hold (no BOS, no pad)."""
        return [v for v in self.vocab if v not in (self.bos, COMPILER_PAD)]

    def encode(self, inputs: Sequence[Sequence]) -> torch.Tensor:
        """Program inputs (lists of token values, no BOS) -> token ids [n, 1 + len] with BOS first."""
        index = {v: i for i, v in enumerate(self.vocab)}
        return torch.tensor([[index[self.bos]] + [index[v] for v in row] for row in inputs], dtype=torch.long)

    def all_inputs(self, seq_len: int | None = None) -> list[tuple]:
        """Every input of `seq_len` tokens (default: the task length), in a fixed order."""
        n = seq_len or self.seq_len
        values = sorted(self.input_values, key=str)
        rows = itertools.permutations(values, n) if self.unique_inputs else itertools.product(values, repeat=n)
        return list(rows)

    def tracr_forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tracr's own forward pass: final residual stream [n, p, d_model] and unembedded output [n, p]
        (argmax ids for categorical outputs, values for numerical ones)."""
        import jax.numpy as jnp

        out = self.assembled.forward(self.assembled.params, jnp.asarray(tokens.numpy()))
        resid = torch.from_numpy(np.array(out.transformer_output.output, dtype=np.float32))
        return resid, torch.from_numpy(np.array(out.unembedded_output))

    def make_task(self, n_examples: int | None = None, seed: int = 0) -> Task:
        """`n_examples` distinct inputs (default: the program's, e.g. all 6 for reverse; inputs repeat
        only when there are fewer), corrupted by a fixed-point-free permutation of the batch (ACDC)."""
        n = n_examples or self.default_examples
        g = torch.Generator().manual_seed(seed)
        pool = self.all_inputs()
        order = torch.randperm(len(pool), generator=g).tolist()
        rows = [pool[order[i % len(pool)]] for i in range(n)]
        clean = self.encode(rows)
        corrupt = clean[_derangement(n, g)] if n > 1 else self.encode([pool[order[1 % len(pool)]]])
        with torch.no_grad():
            logits = self.model(clean)
        answers = logits[:, -1].argmax(-1, keepdim=True) if self.categorical else torch.zeros(n, 1, dtype=torch.long)
        metrics = {"l2": _l2_metric(self.model), "proj": _proj_metric(self.model)}
        if self.categorical:
            metrics["match"] = _match_metric(self.model)
        return Task(f"tracr-{self.name}", clean, corrupt, answers, default_metric="l2", custom_metrics=metrics,
                    info={"program": self.name, "seed": seed, "corruption": "batch permuted without fixed points",
                          "output": "categorical" if self.categorical else "numerical"})

    def describe(self) -> dict:
        return {"name": f"tracr-{self.name}", "program": self.name, "vocab": [str(v) for v in self.input_values],
                "max_seq_len": self.max_seq_len, "bos": self.bos,
                "output": "categorical" if self.categorical else "numerical"}


def _derangement(n: int, g: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) with no fixed point (n >= 2)."""
    while True:
        perm = torch.randperm(n, generator=g)
        if not (perm == torch.arange(n)).any():
            return perm


def _clean_outputs(task: Task, model, default_model) -> torch.Tensor:
    """The model's clean logits at the non-BOS positions: [N, P - 1, n_out]."""
    m = model if model is not None else default_model
    with torch.no_grad():
        return m(task.clean)[:, 1:]


def _l2_metric(default_model) -> Callable:
    """Factory for `l2`: minus the mean squared distance to the clean logits over non-BOS positions, [b]."""
    def factory(task: Task, model=None):
        ref = _clean_outputs(task, model, default_model)

        def metric(logits, idx):
            diff = logits[:, 1:] - ref.to(logits.device)[idx.to(ref.device)]
            return -(diff ** 2).mean(dim=(1, 2))
        return metric
    return factory


def _proj_metric(default_model) -> Callable:
    """Factory for `proj`: the outputs projected onto the clean-minus-corrupted outputs, [b].

    Per example <logits - corrupt, clean - corrupt> over non-BOS positions and output dimensions, divided
    by the task's mean |clean - corrupt|^2: the clean model scores 1 on average, the corrupted inputs 0.
    Linear, so its gradient at the clean model is not zero (l2's is), which gradient methods need; for
    categorical outputs it is, up to a constant, the logit difference of the clean and the corrupted value.
    """
    def factory(task: Task, model=None):
        m = model if model is not None else default_model
        with torch.no_grad():
            ref, base = m(task.clean)[:, 1:], m(task.corrupt)[:, 1:]
        direction = ref - base
        scale = float((direction ** 2).sum(dim=(1, 2)).mean())
        if scale == 0:
            raise TaskError(f"task {task.name!r}: every corrupted input gives the clean outputs, so proj is undefined; "
                            "use more examples or the l2 metric")

        def metric(logits, idx):
            i = idx.to(ref.device)
            d, b = direction.to(logits.device)[i], base.to(logits.device)[i]
            return ((logits[:, 1:] - b) * d).sum(dim=(1, 2)) / scale
        return metric
    return factory


def _match_metric(default_model) -> Callable:
    """Factory for `match`: share of non-BOS positions whose argmax equals the clean argmax, [b]."""
    def factory(task: Task, model=None):
        ref = _clean_outputs(task, model, default_model).argmax(-1)

        def metric(logits, idx):
            return (logits[:, 1:].argmax(-1) == ref.to(logits.device)[idx.to(ref.device)]).float().mean(dim=1)
        return metric
    return factory
