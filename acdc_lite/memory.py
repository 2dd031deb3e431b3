"""Memory planning: sizes as users write them, and the peak memory a discover run will need.

`parse_max_memory("2GB")` / `parse_max_memory("cpu=2GB,0=10GiB")` read the `--max-memory` option: one size
(main memory) or one size per device, in the form accelerate's `max_memory` takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from acdc_lite.boundary import UsageError
from acdc_lite.patching import DEFAULT_MEMORY_MB, chunk_rows
from acdc_lite.search.methods import get

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
         "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, where: str = "--max-memory") -> int:
    """Bytes in "2GB", "1.5GiB", "800MB", "123456" (decimal and binary units), or a UsageError."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in UNITS:
        raise UsageError(f"{where} {text!r} is not a size; write e.g. 800MB, 2GB or 1.5GiB")
    value = int(float(m.group(1)) * UNITS[unit])
    if value <= 0:
        raise UsageError(f"{where} {text!r} must be more than zero bytes")
    return value


def parse_max_memory(text: str, where: str = "--max-memory") -> dict[str | int, int]:
    """{device: bytes} from "2GB" (main memory, "cpu") or "cpu=2GB,0=10GiB" (GPU indices as integers)."""
    out: dict[str | int, int] = {}
    for part in str(text).split(","):
        if "=" not in part:
            if len(str(text).split(",")) > 1:
                raise UsageError(f"{where} {text!r}: give one size (e.g. 2GB) or device=size pairs (e.g. cpu=2GB,0=10GB)")
            out["cpu"] = parse_size(part, where)
            continue
        device, size = (p.strip() for p in part.split("=", 1))
        if not (device == "cpu" or device == "disk" or device == "mps" or device.isdigit()):
            raise UsageError(f"{where} {text!r}: unknown device {device!r}; use cpu, mps or a GPU index such as 0")
        key: str | int = int(device) if device.isdigit() else device
        if key in out:
            raise UsageError(f"{where} {text!r}: device {device} is given twice")
        out[key] = parse_size(size, where)
    return out


# ---- the estimate --------------------------------------------------------------------------------
FLOAT = 4  # bytes: scores and activations are float32

# Per layer, how many tensors of each size the patched forward keeps for the backward pass (autograd's saved
# tensors), counted with torch.autograd.graph.saved_tensors_hooks on small random models (see benchmarks/memory.md):
# bphd = [batch, pos, heads, d_model] (TransformerLens' per-head q/k/v input forks and their normalised copies),
# bpd = [batch, pos, d_model], bpf = [batch, pos, d_mlp], bhpp = [batch, heads, pos, pos]. The weights are frozen in a
# gradient pass (`patching.frozen_weights`), so nothing is kept for their gradients: 35-50% less than with them.
SAVED_PER_LAYER = {
    "bridge": {"bphd": 4.5, "bpd": 6.0, "bpf": 3.0, "bhpp": 2.0},  # TransformerBridge (counted 1.0x on GPT-2, 1.4x on Llama)
    "small": {"bphd": 1.0, "bpd": 3.0, "bpf": 1.0, "bhpp": 2.0},  # SmallTransformer
}


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from a model: sizes, and whether it is a TransformerBridge."""

    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int  # 0 without MLPs
    d_vocab: int
    family: str  # a key of SAVED_PER_LAYER

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + (1 if self.d_mlp else 0))

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (3 * self.n_heads + (1 if self.d_mlp else 0)) + 1


def model_shape(model) -> Shape:
    """The Shape of a model from `load_model`."""
    from acdc_lite.shape import is_bridge, model_info

    info = model_info(model)
    if is_bridge(model):
        d_mlp = int(getattr(model.cfg, "d_mlp", 0) or 0) if info.has_mlp else 0
        family = "bridge"
    else:
        d_mlp = int(model.cfg.d_mlp) if info.has_mlp else 0
        family = "small"
    return Shape(info.n_layers, info.n_heads, info.d_model, d_mlp, info.d_vocab, family)


def offloaded_bytes(model) -> int:
    """Bytes of the weights accelerate keeps off-device (parameters on the meta device), 0 for a model in memory."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.is_meta)


def resident_bytes() -> int:
    """This process's resident memory now."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated peak memory of a search: what the process already holds (`baseline`: libraries, weights, task)
    plus the largest working set of the method's phases, each a dict of named parts in bytes."""

    method: str
    n_examples: int
    seq_len: int
    batch_size: int
    baseline: int
    phases: dict  # phase name -> {part: bytes}

    @property
    def working(self) -> int:
        return max(sum(parts.values()) for parts in self.phases.values())

    @property
    def peak(self) -> int:
        return self.baseline + self.working

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: sum(self.phases[k].values()))

    def describe(self) -> str:
        parts = self.phases[self.peak_phase]
        top = ", ".join(f"{k} {format_size(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:4])
        return (f"memory plan: {self.method}, {self.n_examples} prompts x {self.seq_len} tokens in chunks of {self.batch_size}: "
                f"peak ~{format_size(self.peak)} = {format_size(self.baseline)} held now + {format_size(self.working)} "
                f"during {self.peak_phase} ({top})")

    def to_dict(self) -> dict:
        return {"method": self.method, "n_examples": self.n_examples, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "baseline_bytes": self.baseline, "peak_bytes": self.peak,
                "peak_phase": self.peak_phase, "phases": self.phases}


def format_size(n: float) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def estimate(shape: Shape, method: str, n_examples: int, seq_len: int, batch_size: int, *, ig_steps: int = 5,
             ablation: str = "resample", baseline: int = 0, offloaded: int = 0,
             memory_mb: float = DEFAULT_MEMORY_MB) -> MemoryPlan:
    """The peak memory of `method` on `n_examples` prompts of `seq_len` tokens, evaluated at most `batch_size` at a time.

    Chunks are the patcher's own (`acdc_lite.patching.chunk_rows` with its `memory_mb` budget): a patched pass of C
    candidate masks runs eval_rows // C prompts, a gradient pass grad_rows. Phases (the peak is the largest): building
    the ablated cache (every sender's corrupted output, [N, pos, S, d] for resample ablation, filled in place);
    patched forward passes (a chunk's sender differences [C, S, rows*pos, d], the logits, the per-layer corrections);
    and for gradient methods one forward with every layer's saved activations (SAVED_PER_LAYER) plus the gradients at
    every receiver input (kept across EAP-IG's steps). `offloaded`: bytes of weights accelerate keeps on disk; a
    forward pass reads one layer's worth at a time, but a gradient pass keeps every weight it read until the backward
    pass (autograd saves them), so all of them are resident then.
    """
    s = shape
    n, p, b = n_examples, seq_len, min(batch_size, n_examples)
    f = FLOAT
    eval_rows, grad_rows = chunk_rows(s.n_senders, s.d_model, s.n_heads, s.n_layers, s.d_vocab, p, b, memory_mb)
    if ablation == "resample":
        cache = n * p * s.n_senders * s.d_model * f
    elif ablation == "mean-positional":
        cache = p * s.n_senders * s.d_model * f
    else:
        cache = s.n_senders * s.d_model * f

    def chunk(rows: int) -> dict[str, int]:
        """Tensor sizes (elements) of one chunk of `rows` prompts."""
        return {"bphd": rows * p * s.n_heads * s.d_model, "bpd": rows * p * s.d_model, "bpf": rows * p * s.d_mlp,
                "bhpp": rows * s.n_heads * p * p, "logits": rows * p * s.d_vocab, "deltas": s.n_senders * rows * p * s.d_model}

    def layer_forward(t: dict[str, int]) -> int:  # one layer's transient tensors in a no-grad pass
        return (2 * t["bphd"] + 2 * t["bpd"] + t["bpf"] + 2 * t["bhpp"]) * f

    whole = chunk(b)  # the ablated cache is built batch_size prompts at a time
    phases = {"ablated cache": {"ablated outputs": cache, "one layer's activations": layer_forward(whole),
                                "logits": 2 * whole["logits"] * f}}
    spec = get(method)  # how the method evaluates masks: candidates per pass, a recorded prefix, gradients
    c = spec.candidates
    t = chunk(max(1, min(b, eval_rows // c)))
    prefix = n * p * (s.n_senders + s.n_layers) * s.d_model * f if spec.prefixed else 0
    phases["patched passes"] = {"ablated outputs": cache, "prefix": prefix, "sender differences": c * t["deltas"] * f,
                                "logits": 3 * c * t["logits"] * f, "corrections": 2 * c * 3 * t["bphd"] * f,
                                "one layer's activations": c * layer_forward(t),
                                "offloaded layer being read": offloaded // max(1, s.n_layers)}
    if spec.gradient:
        g = chunk(grad_rows)
        k = SAVED_PER_LAYER[s.family]
        saved = s.n_layers * sum(k[key] * g[key] for key in ("bphd", "bpd", "bpf", "bhpp")) * f
        receiver_grads = (s.n_layers * 3 * g["bphd"] + (s.n_layers + 1) * g["bpd"]) * f
        steps = ig_steps if "ig_steps" in spec.option_names() else 1
        held = receiver_grads if steps > 1 else 0  # the running sum over integration steps
        phases["gradient pass"] = {"ablated outputs": cache, "sender differences": g["deltas"] * f, "saved activations": saved,
                                   "logits": 3 * g["logits"] * f, "summed gradients": held, "offloaded weights read": offloaded,
                                   "prefix": prefix}  # a prefixed gradient method (hybrid) records one in this pass
        phases["gradients"] = {"ablated outputs": cache, "sender differences": g["deltas"] * f,
                               "receiver gradients": 2 * receiver_grads + held}
    return MemoryPlan(method, n, p, b, int(baseline), {k: {kk: int(vv) for kk, vv in v.items()} for k, v in phases.items()})



def fit(shape: Shape, method: str, n_examples: int, seq_len: int, batch_size: int, limit: int, *, ig_steps: int = 5,
        ablation: str = "resample", baseline: int = 0, offloaded: int = 0, memory_mb: float = DEFAULT_MEMORY_MB) -> MemoryPlan:
    """The plan with the largest batch size <= `batch_size` whose estimated peak is within `limit` bytes; a
    UsageError when even one prompt at a time is over it."""
    kwargs = {"ig_steps": ig_steps, "ablation": ablation, "baseline": baseline, "offloaded": offloaded, "memory_mb": memory_mb}
    plan = estimate(shape, method, n_examples, seq_len, batch_size, **kwargs)
    size = plan.batch_size
    while plan.peak > limit and size > 1:
        size = max(1, size // 2) if size > 8 else size - 1
        plan = estimate(shape, method, n_examples, seq_len, size, **kwargs)
    if plan.peak > limit:
        raise UsageError(f"--max-memory {format_size(limit)}: the run needs ~{format_size(plan.peak)} even one prompt at a "
                         f"time ({format_size(plan.baseline)} held after loading the model, {format_size(plan.working)} "
                         f"during {plan.peak_phase}); give more memory, fewer --n-examples, or --device-map auto to keep "
                         "weights on disk")
    return plan
