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

from acdc_lite.tracr.benchmark import SWEEP_FRACTIONS, benchmark, edge_rates, edge_scores_from_nodes, sweep_auc
from acdc_lite.tracr.compile import compare_with_tracr, compile_program
from acdc_lite.tracr.ground_truth import acdc_convention, component_io
from acdc_lite.tracr.program import COMPILER_PAD, METHOD, ONE, TracrProgram, TracrUnavailable
from acdc_lite.tracr.programs import (
    MODEL_SOURCE,
    PREFIX,
    PROGRAMS,
    TASK_SOURCE,
    ProgramSpec,
    load_program,
    model_by_name,
    program_by_name,
    program_name,
    register,
    task_by_name,
)

__all__ = ["COMPILER_PAD", "METHOD", "MODEL_SOURCE", "ONE", "PREFIX", "PROGRAMS", "SWEEP_FRACTIONS", "TASK_SOURCE",
           "ProgramSpec", "TracrProgram", "TracrUnavailable", "acdc_convention", "benchmark", "compare_with_tracr",
           "compile_program", "component_io", "edge_rates", "edge_scores_from_nodes", "load_program", "model_by_name",
           "program_by_name", "program_name", "register", "sweep_auc", "task_by_name"]
