"""tracr-compiled RASP programs as `SmallTransformer`s, with tasks and ground-truth circuits.

`compile_program` compiles a RASP program with tracr's `compile_rasp_to_model` and copies its
weights into a `SmallTransformer` (no LayerNorm, separate token and position embeddings, ReLU MLPs,
non-causal attention unless asked). tracr's layer l (attention, then MLP) is our layer l, so graph
nodes `a{l}.h{h}` and `m{l}` are tracr's `layer_{l}/attn` head h and `layer_{l}/mlp`. A layer tracr
leaves empty keeps zero weights (zero heads, a zero MLP): it reads and writes nothing.

Logits: W_U is tracr's projection of the residual stream onto the output space, so the logits are
the values of the output-space dimensions ([b, pos, n_values] for categorical outputs, whose argmax
is tracr's decoded output; [b, pos, 1] for numerical ones).

Ground truth (method "tracr-ground-truth"): sender s -> receiver r (port q/k/v for heads) is in the
circuit when r's weights read a residual direction s writes (nonzero rows of W_Q W_K^T for q, of
(W_Q W_K^T)^T for k, of W_V W_O for v, of W_in for an MLP, of W_U for the logits) and the program's
computation graph routes that value there: the direction belongs to an SOp the receiver's RASP
expression takes as input at that port (query/key SOp of its selector, aggregated SOp, Map/SequenceMap
inputs, the selector-width head's output for its MLP, the program output for the logits), or it is one
of tracr's two constants the compiled blocks use: `one` (MLP biases, the query side of attention to
BOS) and `tokens:BOS` (the key side of the default attention to BOS, the value of selector width).
Edges carrying only directions the receiver ignores change nothing when ablated, so the ground truth
reproduces the model exactly under every ablation.

Tasks follow the ACDC paper's tracr setup: the clean inputs are BOS + a fixed number of tokens
(reverse: the 6 permutations of 1 2 3), the corrupted inputs are the same batch permuted with no
fixed point, and the metric is `l2`: minus the mean over non-BOS positions and output dimensions of
(logits - clean logits)^2 (ACDC's l2, negated so higher = more clean behaviour). l2 has zero gradient
at the clean model, so gradient methods (EAP, HISP) get `proj` instead: the outputs projected onto
clean - corrupted outputs (1 = clean, 0 = corrupted). Categorical programs also get `match`: the share
of non-BOS positions whose argmax equals the clean one.

By name: `load_model("tracr-reverse")` and `load_task("tracr-reverse", model)` compile a registered
program once per process (`program_by_name`). `benchmark` scores every search method against the
ground truth (edge ROC AUC, precision/recall, faithfulness, cost).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from acdc_lite import hooks
from acdc_lite.circuit import Circuit, ModelRef
from acdc_lite.faithfulness import faithfulness
from acdc_lite.graph import INPUT_NODE, LOGITS_NODE, Edge, ModelGraph, Node, NodeKind, Port
from acdc_lite.registry import MODEL_SOURCES, TASK_SOURCES, ModelSource, TaskSource
from acdc_lite.task import Task, TaskError
from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig

log = logging.getLogger(__name__)

METHOD = "tracr-ground-truth"
COMPILER_PAD = "compiler_pad"
ONE = "one"  # tracr's constant direction, 1 at every position (written by the token embedding)
_SW_SUFFIX = "_selector_width_attn_output"  # tracr's hidden direction between a selector-width head and its MLP


class TracrUnavailable(ImportError):
    """tracr is not installed."""


def _rasp():
    try:
        from tracr.rasp import rasp
    except ImportError as e:
        raise TracrUnavailable("tracr is not installed; install it with `pip install 'acdc-lite[tracr]'` "
                               "(the tracr-pypi package, with jax on CPU)") from e
    return rasp


# ---- the compiled program -----------------------------------------------------------------------
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


# ---- compiling and converting ---------------------------------------------------------------
def compile_program(program, vocab: set, max_seq_len: int, compiler_bos: str = "BOS", *, name: str = "program",
                    causal: bool = False, mlp_exactness: int = 100, seq_len: int | None = None,
                    unique_inputs: bool = False, default_examples: int = 50) -> TracrProgram:
    """Compile a RASP `program` with tracr and convert it; see the module docstring.

    seq_len: tokens after BOS in task inputs (default max_seq_len); unique_inputs: task inputs are
    permutations (no repeated token).
    """
    _rasp()
    from tracr.compiler import compiling

    assembled = compiling.compile_rasp_to_model(program, vocab=set(vocab), max_seq_len=max_seq_len, causal=causal,
                                                 compiler_bos=compiler_bos, compiler_pad=COMPILER_PAD,
                                                 mlp_exactness=mlp_exactness)
    labels = tuple(assembled.residual_labels)
    token_values = sorted(assembled.input_encoder.encoding_map, key=assembled.input_encoder.encoding_map.get)
    categorical = hasattr(assembled.output_encoder, "encoding_map")
    if categorical:
        out_map = assembled.output_encoder.encoding_map
        output_values = tuple(sorted(out_map, key=out_map.get))
        out_dims = [labels.index(f"{program.label}:{v}") for v in output_values]
    else:
        output_values = None
        out_dims = [labels.index(program.label)]
    model = _convert(assembled, out_dims, [str(v) for v in token_values], f"tracr-{name}")
    model.acdc_equivalence = _check_against_tracr(assembled, model, categorical, name)
    directions = _ground_truth_edges(model, program, labels, compiler_bos)
    ground_truth = _ground_truth_circuit(model, directions, name, program, labels, vocab, max_seq_len, compiler_bos)
    n = seq_len or max_seq_len
    log.info("compiled %s: %d layers x %d heads, d_model %d, d_mlp %d; ground truth %d edges", name,
             model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_mlp, len(directions))
    return TracrProgram(name=name, model=model, ground_truth=ground_truth, vocab=tuple(token_values), bos=compiler_bos,
                        output_values=output_values, residual_labels=labels, max_seq_len=max_seq_len, seq_len=n,
                        unique_inputs=unique_inputs, default_examples=default_examples, directions=directions,
                        assembled=assembled)


def _convert(assembled, out_dims: list[int], vocab: list[str], name: str) -> SmallTransformer:
    """tracr's haiku parameters -> a SmallTransformer reading logits from residual dims `out_dims`."""
    mc = assembled.model_config
    if mc.layer_norm:
        raise ValueError("this tracr model uses LayerNorm; compiled tracr models never do, so it cannot be converted")
    p = {k: {n: torch.from_numpy(np.array(v, dtype=np.float32)) for n, v in d.items()} for k, d in assembled.params.items()}
    w_e, w_pos = p["token_embed"]["embeddings"], p["pos_embed"]["embeddings"]
    h, e = mc.num_heads, mc.key_size
    cfg = SmallTransformerConfig(n_layers=mc.num_layers, n_heads=h, d_model=w_e.shape[1], d_head=e, d_vocab=w_e.shape[0],
                                 n_ctx=w_pos.shape[0], d_mlp=mc.mlp_hidden_size, normalization="none", act_fn="relu",
                                 positional="learned", causal=bool(mc.causal), d_vocab_out=len(out_dims), vocab=vocab,
                                 name=name)
    d = cfg.d_model
    state = {"W_E": w_e, "W_pos": w_pos, "W_U": torch.zeros(d, len(out_dims)), "b_U": torch.zeros(len(out_dims))}
    state["W_U"][out_dims, torch.arange(len(out_dims))] = 1.0
    for layer in range(cfg.n_layers):
        pre, blk = f"transformer/layer_{layer}", f"blocks.{layer}"
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            state[f"{blk}.attn.W_{ours}"] = p[f"{pre}/attn/{theirs}"]["w"].view(d, h, e).permute(1, 0, 2)  # [h, d, e]
            state[f"{blk}.attn.b_{ours}"] = p[f"{pre}/attn/{theirs}"]["b"].view(h, e)
        state[f"{blk}.attn.W_O"] = p[f"{pre}/attn/linear"]["w"].view(h, e, d)
        state[f"{blk}.attn.b_O"] = p[f"{pre}/attn/linear"]["b"]
        state[f"{blk}.mlp.W_in"], state[f"{blk}.mlp.b_in"] = p[f"{pre}/mlp/linear_1"]["w"], p[f"{pre}/mlp/linear_1"]["b"]
        state[f"{blk}.mlp.W_out"], state[f"{blk}.mlp.b_out"] = p[f"{pre}/mlp/linear_2"]["w"], p[f"{pre}/mlp/linear_2"]["b"]
    model = SmallTransformer(cfg)
    model.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return model.eval()


def compare_with_tracr(prog: TracrProgram, tokens: torch.Tensor | None = None) -> dict:
    """Our model against tracr's own forward pass on `tokens` (default: every task-length input).

    Returns the number of inputs, the max |difference| of the final residual stream and of the output
    values, and whether every decoded output (argmax ids, or values to 1e-4) agrees.
    """
    tokens = prog.encode(prog.all_inputs()) if tokens is None else tokens
    ref_resid, ref_out = prog.tracr_forward(tokens)
    with torch.no_grad():
        resid = {}
        hook = (hooks.resid_post(prog.model.cfg.n_layers - 1), lambda x, hook: resid.setdefault("x", x))
        with prog.model.hooks(fwd_hooks=[hook]):
            logits = prog.model(tokens)
    ref_logits = ref_resid @ prog.model.W_U.detach()
    ours = logits.argmax(-1) if prog.categorical else logits[..., 0]
    if prog.categorical:
        decoded_equal = bool((ours == ref_out).all())
    else:
        decoded_equal = bool(torch.allclose(ours, ref_out.float(), atol=1e-4))
    return {"n_inputs": len(tokens), "max_abs_residual": float((resid["x"] - ref_resid).abs().max()),
            "max_abs_output": float((logits - ref_logits).abs().max()), "decoded_equal": decoded_equal}


def _check_against_tracr(assembled, model: SmallTransformer, categorical: bool, name: str, tolerance: float = 1e-4):
    """The converted model against tracr's own forward pass on a seeded probe of random inputs (BOS first):
    ModelLoadError (EquivalenceError) unless the final residual streams agree within `tolerance` and every
    decoded output agrees."""
    import jax.numpy as jnp

    from acdc_lite.models import Equivalence, probe_tokens, require_equivalent

    vocab_ids = sorted(v for k, v in assembled.input_encoder.encoding_map.items() if k not in (COMPILER_PAD,))
    bos = assembled.input_encoder.encoding_map[assembled.input_encoder.bos_token]
    ids = torch.tensor([i for i in vocab_ids if i != bos])
    probe = probe_tokens(len(ids), model.cfg.n_ctx - 1)
    tokens = torch.cat([torch.full((len(probe), 1), bos), ids[probe]], dim=1)
    out = assembled.forward(assembled.params, jnp.asarray(tokens.numpy()))
    ref_resid = torch.from_numpy(np.array(out.transformer_output.output, dtype=np.float32))
    resid = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(hooks.resid_post(model.cfg.n_layers - 1),
                                                  lambda x, hook: resid.setdefault("x", x))]):
        logits = model(tokens)
    ref_logits = ref_resid @ model.W_U.detach()
    if categorical:
        agree = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()
    else:
        agree = torch.isclose(logits, ref_logits, atol=tolerance).all(-1).float().mean()
    eq = Equivalence("tracr model (final residual stream)", float((resid["x"] - ref_resid).abs().max()), float(agree),
                     tolerance, tuple(tokens.shape))
    return require_equivalent(eq, f"tracr-{name}")


# ---- ground truth ------------------------------------------------------------------------------
def _nonzero_rows(m: torch.Tensor) -> set[int]:
    return set((m != 0).any(dim=1).nonzero().flatten().tolist())


def component_io(model: SmallTransformer) -> tuple[dict[Node, set[int]], dict[tuple[Node, Port], set[int]]]:
    """Residual dims each sender writes and each receiver port reads, from the weights (zero = not used)."""
    dbl = {k: v.detach().double() for k, v in model.state_dict().items()}
    writes = {INPUT_NODE: _nonzero_rows(dbl["W_E"].T) | _nonzero_rows(dbl["W_pos"].T)}
    reads = {(LOGITS_NODE, Port.IN): _nonzero_rows(dbl["W_U"])}
    for layer in range(model.cfg.n_layers):
        b = f"blocks.{layer}"
        for h in range(model.cfg.n_heads):
            node = Node(NodeKind.HEAD, layer, h)
            qk = dbl[f"{b}.attn.W_Q"][h] @ dbl[f"{b}.attn.W_K"][h].T  # [d, d]
            ov = dbl[f"{b}.attn.W_V"][h] @ dbl[f"{b}.attn.W_O"][h]  # [d, d]
            reads[(node, Port.Q)], reads[(node, Port.K)], reads[(node, Port.V)] = _nonzero_rows(qk), _nonzero_rows(qk.T), _nonzero_rows(ov)
            writes[node] = _nonzero_rows(ov.T)
        mlp = Node(NodeKind.MLP, layer)
        reads[(mlp, Port.IN)] = _nonzero_rows(dbl[f"{b}.mlp.W_in"])
        writes[mlp] = _nonzero_rows(dbl[f"{b}.mlp.W_out"].T)
    return writes, reads


def _name(label: str) -> str:
    """Residual label 'sop:value' (or 'one', or a hidden direction) -> the SOp / direction name."""
    return label.split(":", 1)[0]


def _program_inputs(rasp, graph, node_id: str, port: Port, is_head: bool) -> set[str]:
    """Names of the residual directions the program routes into `node_id`'s block at `port`."""
    expr = graph.nodes[node_id]["EXPR"]
    if isinstance(expr, (rasp.Aggregate, rasp.SelectorWidth)) and is_head and isinstance(expr.selector, rasp.Select):
        sel = expr.selector
        by_port = {Port.Q: {sel.queries.label}, Port.K: {sel.keys.label},
                   Port.V: {expr.sop.label} if isinstance(expr, rasp.Aggregate) else set()}
        return by_port[port]
    if isinstance(expr, rasp.SelectorWidth) and not is_head:
        return {node_id + _SW_SUFFIX}
    if isinstance(expr, rasp.Map):
        return {expr.inner.label}
    if isinstance(expr, rasp.SequenceMap):
        return {expr.fst.label, expr.snd.label}
    # anything else: every SOp the expression depends on (through selectors)
    found, todo = set(), list(graph.predecessors(node_id))
    while todo:
        n = todo.pop()
        if isinstance(graph.nodes[n]["EXPR"], rasp.SOp):
            found.add(n)
        else:
            todo += list(graph.predecessors(n))
    return found


def _ground_truth_edges(model: SmallTransformer, program, labels: Sequence[str], bos: str) -> dict[str, tuple[str, ...]]:
    """Ground-truth edge name -> residual directions it carries (SOp names, not labels); see the module docstring."""
    rasp = _rasp()
    from tracr.compiler import rasp_to_graph

    graph = rasp_to_graph.extract_rasp_graph(program).graph
    constants = {ONE, f"tokens:{bos}"}
    writes, reads = component_io(model)

    def nodes_of(sender_dims: set[int]) -> set[str]:
        names = {_name(labels[i]) for i in sender_dims}
        return {n.removesuffix(_SW_SUFFIX) for n in names} & set(graph.nodes)

    def allowed(dst: Node, port: Port) -> set[str]:
        if dst.kind is NodeKind.LOGITS:
            return {program.label}
        return set().union(*[_program_inputs(rasp, graph, n, port, dst.kind is NodeKind.HEAD) for n in nodes_of(writes[dst])])

    out = {}
    for edge in ModelGraph(model.cfg.n_layers, model.cfg.n_heads).edges:
        shared = sorted(writes[edge.src] & reads[(edge.dst, edge.port)])
        if not shared:
            continue
        ok = allowed(edge.dst, edge.port)
        carried = tuple(labels[i] for i in shared if labels[i] in constants or _name(labels[i]) in ok)
        ignored = [labels[i] for i in shared if labels[i] not in carried]
        if ignored:
            log.warning("%s reads %s, which the program does not route there; left out of the ground truth", edge, ignored)
        if carried:
            out[str(edge)] = tuple(_readable(c, graph) for c in carried)
    return out


def _readable(label: str, graph) -> str:
    """A residual label with the SOp's name instead of its process-dependent label ('length_5:1' -> 'length:1')."""
    name, sep, value = label.partition(":")
    base = name.removesuffix(_SW_SUFFIX)
    if base not in graph.nodes:
        return label
    expr_name = graph.nodes[base]["EXPR"].name
    if sum(graph.nodes[n]["EXPR"].name == expr_name for n in graph.nodes) > 1:
        return label  # an ambiguous (default) name: keep the unique label
    return expr_name + name[len(base):] + sep + value


def _ground_truth_circuit(model, directions, name, program, labels, vocab, max_seq_len, bos) -> Circuit:
    from importlib.metadata import PackageNotFoundError, version

    from acdc_lite import __version__

    try:
        tracr_version = version("tracr-pypi")
    except PackageNotFoundError:  # tracr installed some other way
        tracr_version = "unknown"
    task = {"name": f"tracr-{name}", "program": name, "output": program.name, "vocab": sorted(map(str, vocab)),
            "max_seq_len": max_seq_len, "bos": bos}
    rule = ("receiver reads (nonzero weights) a residual direction the sender writes, and the RASP graph routes that "
            "SOp into the receiver's expression at that port, or the direction is tracr's constant 'one' or tokens:BOS")
    return Circuit(model=ModelRef.of(model), edges={e: 1.0 for e in directions}, task=task,
                   method={"name": METHOD, "params": {"rule": rule, "directions": {e: list(d) for e, d in directions.items()}}},
                   ablation="zero", metrics={"n_edges": len(directions), "n_edges_acdc_convention": len(acdc_convention(directions))},
                   provenance={"package_version": __version__, "tracr_version": tracr_version, "residual_dims": len(labels)})


def acdc_convention(directions: dict[str, Sequence[str]]) -> list[str]:
    """Edges as the ACDC paper counts tracr circuits: `input` split into `embed` (tokens, one) and `pos`
    (indices), plus one q/k/v-input -> head edge per head port that receives anything."""
    out, ports = [], set()
    for name, carried in directions.items():
        edge = Edge.parse(name)
        if edge.dst.kind is NodeKind.HEAD:
            ports.add((str(edge.dst), edge.port.value))
        if edge.src.kind is NodeKind.INPUT:
            kinds = {"pos" if _name(c) == "indices" else "embed" for c in carried}
            out += [name.replace("input->", f"{k}->", 1) for k in sorted(kinds)]
        else:
            out.append(name)
    return out + [f"{head}<{port}>->{head}" for head, port in sorted(ports)]


# ---- the program suite ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgramSpec:
    """A registered program: a builder of a fresh RASP program and how to compile it and make tasks."""

    build: Callable  # rasp module -> SOp
    vocab: tuple
    max_seq_len: int
    seq_len: int
    unique_inputs: bool
    default_examples: int
    description: str


def _reverse(rasp):
    """ACDC's tracr-reverse: length via selector width, opp_idx = length - indices - 1, aggregate tokens."""
    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all_true")).named("length")
    opp_idx = (length - rasp.indices).named("opp_idx")
    opp_idx = (opp_idx - 1).named("opp_idx-1")
    flip = rasp.Select(rasp.indices, opp_idx, rasp.Comparison.EQ).named("flip")
    return rasp.Aggregate(flip, rasp.tokens).named("reverse")


def _frac_prevs(rasp, token: str = "x", name: str = "frac_prevs"):
    """Fraction of the tokens so far equal to `token` (numerical mean over indices <= own index)."""
    is_token = rasp.numerical(rasp.Map(lambda t: t == token, rasp.tokens).named(f"is_{token}"))
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    return rasp.numerical(rasp.Aggregate(prevs, is_token, default=0)).named(name)


def _proportion(rasp):
    """ACDC's tracr-proportion: make_frac_prevs(tokens == 'x')."""
    return _frac_prevs(rasp, "x")


def _sort(rasp, max_seq_len: int = 4, min_key: float = 1):
    """Sort tokens (repeats allowed): unique keys token + i / max_seq_len (MLP), target position by
    selector width (head + MLP), then each position fetches the token whose target it is (head)."""
    keys = rasp.SequenceMap(lambda x, i: x + min_key * i / max_seq_len, rasp.tokens, rasp.indices).named("sort_keys")
    smaller = rasp.Select(keys, keys, rasp.Comparison.LT).named("smaller")
    target_pos = rasp.SelectorWidth(smaller).named("target_pos")
    fetch = rasp.Select(target_pos, rasp.indices, rasp.Comparison.EQ).named("fetch")
    return rasp.Aggregate(fetch, rasp.tokens).named("sort")


def _hist(rasp):
    """How often each position's token occurs in the input (selector width of token equality)."""
    return rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_tok")).named("hist")


def _shifted(rasp, offset: int):
    """The token `offset` positions back (BOS's default, a zero vector, before that)."""
    sel = rasp.Select(rasp.indices, rasp.indices, lambda k, q: q == k + offset).named(f"back{offset}")
    return rasp.Aggregate(sel, rasp.tokens).named(f"tok_back{offset}")


def _pattern(rasp):
    """Whether the last three tokens are a b c: two shift heads in one layer, then two MLP stages."""
    ab = rasp.SequenceMap(lambda x, y: x == "a" and y == "b", _shifted(rasp, 2), _shifted(rasp, 1)).named("ab_before")
    return rasp.SequenceMap(lambda p, t: bool(p) and t == "c", ab, rasp.tokens).named("pattern_abc")


def _balance(rasp):
    """Fraction of '(' minus fraction of ')' so far: two token MLPs, two numerical heads, a linear MLP."""
    opens = _frac_prevs(rasp, "(", "frac_open")
    closes = _frac_prevs(rasp, ")", "frac_close")
    return rasp.numerical(rasp.LinearSequenceMap(opens, closes, 1, -1)).named("balance")


PROGRAMS: dict[str, ProgramSpec] = {
    "reverse": ProgramSpec(_reverse, (1, 2, 3), 5, 3, True, 6, _reverse.__doc__),
    "proportion": ProgramSpec(_proportion, ("w", "x", "y", "z"), 5, 4, False, 50, _proportion.__doc__),
    "sort": ProgramSpec(_sort, (1, 2, 3), 4, 4, False, 50, _sort.__doc__),
    "hist": ProgramSpec(_hist, ("a", "b", "c"), 5, 4, False, 50, _hist.__doc__),
    "pattern": ProgramSpec(_pattern, ("a", "b", "c"), 5, 4, False, 50, _pattern.__doc__),
    "balance": ProgramSpec(_balance, ("(", ")", "a"), 5, 4, False, 50, _balance.__doc__),
}


def load_program(name: str) -> TracrProgram:
    """Compile a registered program (see `PROGRAMS`)."""
    if name not in PROGRAMS:
        raise KeyError(f"unknown tracr program {name!r}; registered: {', '.join(PROGRAMS)}")
    spec = PROGRAMS[name]
    return compile_program(spec.build(_rasp()), set(spec.vocab), spec.max_seq_len, name=name, seq_len=spec.seq_len,
                           unique_inputs=spec.unique_inputs, default_examples=spec.default_examples)


# ---- by name: load_model("tracr-reverse"), load_task("tracr-reverse", model) ---------------------------
PREFIX = "tracr-"


def program_name(name: str) -> str:
    """'tracr-reverse' (or 'reverse') -> 'reverse'; KeyError listing the registered names otherwise."""
    program = str(name).removeprefix(PREFIX)
    if program not in PROGRAMS:
        raise KeyError(f"unknown tracr program {name!r}; registered: {', '.join(PREFIX + p for p in PROGRAMS)}")
    return program


@functools.cache
def _compiled(program: str) -> TracrProgram:
    return load_program(program)


def program_by_name(name: str) -> TracrProgram:
    """The registered program `name` ('tracr-reverse' or 'reverse'), compiled once per process.

    TracrUnavailable (an ImportError) without tracr, KeyError for an unknown name. The program is shared
    between callers: do not modify its model (`model_by_name` hands out copies).
    """
    _rasp()  # a clear error without tracr, even when the program is cached
    return _compiled(program_name(name))


def model_by_name(name: str) -> SmallTransformer:
    """A copy of the registered program's converted model (the program is compiled once per process)."""
    return copy.deepcopy(program_by_name(name).model)


def task_by_name(name: str, model, n_examples: int | None = None, seed: int = 0, metric: str | None = None) -> Task:
    """The registered program's task for `model` (which must be that program's model, from `load_model(name)`).

    n_examples: distinct inputs, at most every input of the task length (default: the program's own count,
    e.g. the 6 permutations for reverse). metric: the task's default metric (default l2).
    """
    prog = program_by_name(name)
    got = getattr(getattr(model, "cfg", None), "name", None)
    if got != prog.model.cfg.name:
        raise TaskError(f"task {PREFIX + prog.name!r} runs on its compiled program: load the model with "
                        f"load_model({PREFIX + prog.name!r}) (got model {got or type(model).__name__!r})")
    n = min(n_examples or prog.default_examples, len(prog.all_inputs()))
    task = prog.make_task(n, seed=seed)
    return replace(task, default_metric=metric) if metric else task


def _claims(name: str) -> bool:
    return str(name).startswith(PREFIX)


def _names() -> list[str]:
    return [PREFIX + p for p in PROGRAMS]


MODEL_SOURCE = ModelSource("tracr", _claims, model_by_name, _names)
TASK_SOURCE = TaskSource("tracr", _claims, task_by_name, _names)


def register() -> None:
    """Make `load_model("tracr-<program>")` and `load_task("tracr-<program>", model)` find this module's programs
    (called by the package's plugin hook; see `acdc_lite.registry`)."""
    MODEL_SOURCES.register(MODEL_SOURCE.name, MODEL_SOURCE)
    TASK_SOURCES.register(TASK_SOURCE.name, TASK_SOURCE)


# ---- benchmark: every search method against the ground truth ---------------------------------------------
SWEEP_FRACTIONS = (0.0,) + tuple(10 ** (k / 4) for k in range(-24, 1))  # ACDC's tau as a share of |m(full) - m(empty)|


def sweep_auc(points: Sequence[tuple[float, float]]) -> float:
    """ROC AUC of a threshold sweep as the ACDC paper computed it ("pessimistic"): the points (FPR, TPR) plus
    (0, 0) and (1, 1) make a staircase whose height at x is the best TPR of any point with FPR <= x."""
    pts = sorted({(float(x), float(y)) for x, y in points} | {(0.0, 0.0), (1.0, 1.0)})
    area, best = 0.0, 0.0
    for (x, y), (x_next, _) in zip(pts, pts[1:] + [(1.0, 1.0)], strict=True):
        best = max(best, y)
        area += (x_next - x) * best
    return area


def edge_rates(graph: ModelGraph, kept: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(false positive rate, true positive rate) of the edge set `kept` [S, R] against `truth` [S, R]."""
    pos, neg = truth & graph.valid, graph.valid & ~truth
    return float((kept & neg).sum() / neg.sum()), float((kept & pos).sum() / pos.sum())


def edge_scores_from_nodes(graph: ModelGraph, scores: torch.Tensor) -> torch.Tensor:
    """Edge scores [S, R] for a node-level method whose node scores fill their sender rows: an edge scores its
    weaker endpoint's |score| (`input`, `logits` and unscored nodes: +inf), so a threshold keeps exactly the
    edges between the nodes it keeps."""
    node = {}
    for i, n in enumerate(graph.senders):
        row = scores[i].abs()
        row = row[~torch.isnan(row)]
        node[n] = float(row.max()) if len(row) else math.inf
    out = torch.full(graph.valid.shape, float("nan"))
    for e in graph.edges:
        out[graph.edge_index(e)] = min(node[e.src], node.get(e.dst, math.inf))
    return out


def benchmark(programs: Sequence[str] | None = None, methods: Sequence[str] | None = None, ablation: str = "zero",
              metric: str = "l2", gradient_metric: str = "proj", *, sweep: Sequence[float] = SWEEP_FRACTIONS,
              n_examples: int | None = None, seed: int = 0, rel_tol: float = 1e-6, progress: bool = False) -> list[dict]:
    """One row per program x method: each search method (default settings) against the program's ground truth.

    Conventions (the ACDC paper's for tracr): zero ablation, metric l2, each program's default task. EAP and
    HISP take gradients at the clean model only, where l2's is zero (every score would be 0), so they search
    on `gradient_metric`; EAP-IG and hybrid (integrated gradients) use `metric`. Faithfulness is always on
    `metric`. Node methods remove heads and MLPs (include_mlps).

    Edge ROC AUC (`roc_auc`, against the ground truth's edges, over every graph edge):
    - acdc: ACDC's tau swept over `sweep` x |metric(full) - metric(empty)|, one run per tau, each circuit a
      (FPR, TPR) point, area by `sweep_auc` (the paper's); its own edge scores give `roc_auc_scores`.
    - edge-scoring methods: Mann-Whitney AUC of |score| (validate.roc_auc; unscored edges rank last).
    - node methods: the same over `edge_scores_from_nodes`.
    - a method without scores: the binary circuit as scores.
    `roc_auc_tol` is the score AUC with every |score| below `rel_tol` x the largest counted as 0: tracr's
    saturated softmax and sharp ReLU steps give some ground-truth edges effects and gradients down to 1e-13
    of the largest, which rank them above the exact zeros of unconnected edges but survive no threshold.
    `roc_auc_binary` is always the binary circuit's (one point, trapezoids: (1 + TPR - FPR) / 2).
    Cost columns are the default run's; the sweep's cost is in `sweep_*`.
    """
    from acdc_lite.patching import EdgePatcher, ablated_outputs
    from acdc_lite.search import METHODS, Level, search, to_circuit
    from acdc_lite.validate import ground_truth, roc_auc

    rows = []
    for name in programs or list(PROGRAMS):
        prog = program_by_name(name)
        task = prog.make_task(n_examples, seed=seed)
        graph = ModelGraph.from_model(prog.model)
        truth = prog.ground_truth.mask()
        valid = graph.valid
        with torch.no_grad():
            patcher = EdgePatcher(prog.model, graph, task.clean, ablated_outputs(prog.model, graph, task.corrupt, ablation))
            judge = task.metric(metric, prog.model)
            full, empty = (float(v) for v in patcher.evaluate(torch.stack([graph.full_mask(), graph.empty_mask()]), judge))
        for method in methods or METHODS:
            spec = METHODS[method]
            node_level = spec.level is Level.NODE
            search_metric = gradient_metric if spec.clean_gradient else metric  # l2's gradient at the clean model is 0
            kw = {"include_mlps": True} if "include_mlps" in spec.option_names() else {}
            run = functools.partial(search, prog.model, task, method, metric=search_metric, ablation=ablation, seed=seed,
                                    progress=progress, **kw)
            started = time.perf_counter()
            result = run()
            seconds = time.perf_counter() - started
            kept = result.kept
            scores = edge_scores_from_nodes(graph, result.scores) if node_level else result.scores
            has_scores = not torch.isnan(scores[valid]).all()
            circuit = to_circuit(prog.model, task, result)
            gt = ground_truth(prog.ground_truth, scores if has_scores else kept.float(), circuit)
            magnitude = scores[valid].abs()
            magnitude = magnitude[torch.isfinite(magnitude)]  # node methods: input/logits edges are +inf
            cutoff = rel_tol * float(magnitude.max()) if len(magnitude) else 0.0
            tol_auc = roc_auc(scores.masked_fill(scores.abs() < cutoff, 0.0)[valid].abs().numpy(), truth[valid].numpy())
            binary = roc_auc(kept[valid].float().numpy(), truth[valid].numpy())
            row = {"program": name, "method": method, "metric": search_metric, "ablation": ablation,
                   "graph_edges": graph.n_edges(), "gt_edges": len(prog.ground_truth.edges), "edges": int(kept.sum()),
                   "roc_auc": gt.edge_auc, "roc_from": "edge scores" if has_scores else "binary circuit",
                   "roc_auc_scores": gt.edge_auc if has_scores else float("nan"),
                   "roc_auc_tol": tol_auc if has_scores else float("nan"), "roc_auc_binary": binary,
                   "edge_precision": gt.edges.precision, "edge_recall": gt.edges.recall,
                   "node_roc_auc": gt.node_auc, "node_precision": gt.nodes.precision, "node_recall": gt.nodes.recall,
                   "faithfulness": faithfulness(float(patcher.evaluate(kept, judge)[0]), full, empty),
                   "forward_passes": result.search_forward_passes,
                   "bookkeeping_passes": result.bookkeeping_forward_passes, "backward_passes": result.backward_passes,
                   "seconds": seconds, "sweep_runs": 0, "sweep_forward_passes": 0.0, "sweep_seconds": 0.0}
            if node_level:
                row["roc_from"] = "node scores (edge: weaker endpoint)"
            if method == "acdc":
                gap = abs(result.metric_full - result.metric_empty)
                started, points, passes = time.perf_counter(), [], 0.0
                for fraction in sweep:
                    swept = run(tau=fraction * gap)
                    points.append(edge_rates(graph, swept.kept, truth))
                    passes += swept.search_forward_passes
                row.update(roc_auc=sweep_auc(points), roc_from=f"tau sweep ({len(sweep)} runs)", sweep_runs=len(sweep),
                           sweep_forward_passes=passes, sweep_seconds=time.perf_counter() - started)
            rows.append(row)
            log.info("%s %s: ROC AUC %.3f (%s), %d edges", name, method, row["roc_auc"], row["roc_from"], row["edges"])
    return rows
