"""Loading hooked models: one entry point for zoo names, local directories, hub names and in-memory models.

Hugging Face models are wrapped in a TransformerLens 4 `TransformerBridge` in compatibility mode with
per-head results, split q/k/v inputs and MLP-input hooks switched on (and checked to have taken
effect). Our own `SmallTransformer` (toy, attention-only and tracr models) has those hooks natively.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from acdc_lite import hooks, offload
from acdc_lite.choices import Processing
from acdc_lite.registry import MODEL_SOURCES, claiming
from acdc_lite.shape import ModelInfo, ModelLoadError, is_bridge, model_info
from acdc_lite.suffix import probe_suffix
from acdc_lite.transformer import SmallTransformer

log = logging.getLogger(__name__)

__all__ = ["EQUIVALENCE_TOLERANCE", "Equivalence", "EquivalenceError", "ModelInfo", "ModelLoadError", "ModelSource", "Placement",
           "Processing",
           "SourceKind", "fingerprint", "load_model", "looks_like_path", "model_info", "model_source"]


def fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, shape and bytes: identifies the weights, not the object (offloaded
    weights are read back, so an offloaded model has the fingerprint of the same model in memory)."""
    h = hashlib.sha256()
    for name, p in offload.materialized_state(model):
        t = p.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.numpy())  # the array's buffer: the same bytes as tobytes(), without a copy
    return h.hexdigest()[:16]


class SourceKind(Enum):
    """Where a model came from; decides how a saved circuit finds it again."""

    ZOO = "zoo"  # a model shipped in acdc_lite/zoo, by name
    LOCAL = "local"  # a directory on disk, by the path as given
    HUB = "hub"  # a Hugging Face hub id
    REGISTERED = "registered"  # a name a registered model source builds (e.g. tracr-reverse)
    IN_MEMORY = "in-memory"  # an object handed to load_model: cannot be found again from a file


EQUIVALENCE_TOLERANCE = 1e-3  # max |hooked - source| log-probability on the probe batch (float32)
PROBE_SHAPE = (4, 16)  # probe batch: sequences x tokens (tokens capped by the model's context)


@dataclass(frozen=True)
class Equivalence:
    """The hooked model against the model it was built from, on a seeded random-token probe batch."""

    source: str  # what it was compared with, e.g. "GPT2LMHeadModel checkpoint" or "tracr"
    max_abs_diff: float  # max |difference| of log-probabilities (tracr: of the final residual stream)
    argmax_agreement: float  # fraction of probe positions whose top token (tracr: decoded output) agrees
    tolerance: float
    probe: tuple[int, int]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.argmax_agreement == 1.0

    def to_dict(self) -> dict:
        return {"source": self.source, "max_abs_diff": float(f"{self.max_abs_diff:.3g}"),
                "argmax_agreement": round(self.argmax_agreement, 4), "tolerance": self.tolerance,
                "probe": list(self.probe)}


@dataclass(frozen=True)
class ModelSource:
    """How a hooked model was obtained: enough to load it again (a circuit records it)."""

    kind: SourceKind
    given: str  # the reference as the user gave it (a path exactly as typed, a hub id, a zoo name)
    resolved: str | None = None  # absolute directory for LOCAL and ZOO (in memory only; never written to a file)
    processing: Processing | None = None  # None: not a bridge, nothing to process
    equivalence: Equivalence | None = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind.value, "given": self.given}
        if self.resolved is not None:
            d["resolved"] = self.resolved
        d["processing"] = None if self.processing is None else self.processing.value
        d["equivalence"] = None if self.equivalence is None else self.equivalence.to_dict()
        return d


def model_source(model: nn.Module) -> ModelSource:
    """The source `load_model` recorded on `model` (IN_MEMORY for a model that did not come from it)."""
    source = getattr(model, "acdc_source", None)
    return source if isinstance(source, ModelSource) else ModelSource(SourceKind.IN_MEMORY, type(model).__name__)


@dataclass(frozen=True)
class Placement:
    """Where a Hugging Face checkpoint's weights live, through accelerate (`from_pretrained`'s arguments).

    device_map: "auto" | "balanced" | "sequential" | a device name | {module name: device or "disk"};
    max_memory: {device: bytes or "2GiB"} for the weights ("cpu" for main memory); modules that do not fit
    go to the next device, then to disk (`offload_folder`, a temporary folder when None; a safetensors
    checkpoint is read in place). Offloaded models need `processing="none"` (see `acdc_lite.offload`).
    """

    device_map: str | dict | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None

    @property
    def active(self) -> bool:
        return self.device_map is not None

    def kwargs(self) -> dict:
        if not self.active:
            return {}
        out = {"device_map": self.device_map}
        if self.max_memory is not None:
            out["max_memory"] = dict(self.max_memory)
        if self.offload_folder is not None:
            out["offload_folder"] = self.offload_folder
        return out


class EquivalenceError(ModelLoadError):
    """The hooked model does not compute its source's function."""


class CheckpointUnreadable(ModelLoadError):
    """transformers could not read a checkpoint (absent, not cached, corrupt)."""


def probe_tokens(d_vocab: int, n_ctx: int | None) -> torch.Tensor:
    """[4, min(16, n_ctx)] seeded random token ids in [0, d_vocab): the batch both models see."""
    n, p = PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, d_vocab, (n, min(p, n_ctx or p)), generator=g)


def compare_logits(hooked: torch.Tensor, source: torch.Tensor, what: str, tolerance: float = EQUIVALENCE_TOLERANCE,
                   ) -> Equivalence:
    """Equivalence of two [n, p, vocab] logit tensors, compared as log-probabilities (a per-position constant,
    which centring the unembedding adds, does not count)."""
    a, b = hooked.float().log_softmax(-1), source.float().log_softmax(-1)
    return Equivalence(what, float((a - b).abs().max()), float((a.argmax(-1) == b.argmax(-1)).float().mean()),
                       tolerance, tuple(hooked.shape[:2]))


def require_equivalent(eq: Equivalence, name: str, hint: str = "") -> Equivalence:
    """`eq`, or EquivalenceError saying what differs."""
    if not eq.ok:
        raise EquivalenceError(
            f"the hooked model of {name} does not reproduce its {eq.source}: on a {eq.probe[0]} x {eq.probe[1]} random-token "
            f"probe the outputs differ by up to {eq.max_abs_diff:.3g} (tolerance {eq.tolerance:g}) and the top token agrees at "
            f"{eq.argmax_agreement:.0%} of positions{'; ' + hint if hint else ''}")
    log.info("%s reproduces its %s: max |diff| %.2g on a %s probe", name, eq.source, eq.max_abs_diff, eq.probe)
    return eq


def _hf_architecture(hf_model: nn.Module) -> str:
    archs = getattr(hf_model.config, "architectures", None)
    return archs[0] if archs else type(hf_model).__name__


def _hf_probe(hf_model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A probe batch for an HF causal LM and its logits on it (before any weight processing)."""
    c = hf_model.config
    n_ctx = getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)
    vocab = hf_model.get_output_embeddings().weight.shape[0] if hf_model.get_output_embeddings() is not None else c.vocab_size
    tokens = probe_tokens(min(int(c.vocab_size), int(vocab)), n_ctx)
    tokens = tokens.to(next(hf_model.parameters()).device)
    with torch.no_grad():
        return tokens, hf_model(tokens).logits.detach().clone()


def _bridge_from_hf(hf_model: nn.Module, name: str, processing: Processing, tokenizer=None,
                    tolerance: float = EQUIVALENCE_TOLERANCE) -> tuple[nn.Module, Equivalence]:
    """Wrap an HF model in a TransformerBridge with circuit hooks and `processing`, checked against the model."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    arch = _hf_architecture(hf_model)
    hf_model.eval()
    if offload.is_offloaded(hf_model) and hf_model.get_input_embeddings().weight.is_meta:
        raise ModelLoadError(f"{name}: max_memory leaves no room for the input embeddings, which must stay in memory "
                             "(inputs are placed where they are); give a larger max_memory")
    tokens, reference = _hf_probe(hf_model)  # before processing, which rewrites the HF modules' weights in place
    try:
        bridge = build_bridge_from_module(hf_model, arch, hf_config=hf_model.config, tokenizer=tokenizer, model_name=name)
    except Exception as e:  # the bridge raises many types for unsupported architectures
        raise ModelLoadError(f"TransformerLens 4 cannot wrap architecture {arch!r}: {e}") from e
    if offload.is_offloaded(hf_model):
        if processing is not Processing.NONE:
            raise ModelLoadError(f"{name}: {processing.value!r} weight processing rewrites weights that offloaded modules "
                                 "do not hold; load an offloaded model with processing='none'")
        try:
            n = offload.patch_bridge(bridge)
        except offload.OffloadError as e:
            raise ModelLoadError(f"{name}: {e}") from e
        log.info("%s: %d offloaded modules; per-head projections of %d attention layers read them on demand", name,
                 len(offload.offloaded_modules(hf_model)), n)
    _enable_circuit_hooks(bridge, processing)
    with torch.no_grad():
        hooked = bridge(tokens)
    hint = "" if processing is Processing.NONE else f"{processing.value!r} weight processing changes this model: use processing='none'"
    eq = require_equivalent(compare_logits(hooked, reference, f"{arch} checkpoint", tolerance), name, hint)
    return bridge, eq


def _enable_circuit_hooks(bridge: nn.Module, processing: Processing = Processing.NONE) -> None:
    """Switch on per-head results, split q/k/v inputs and MLP-input hooks, then check they work."""
    try:
        bridge.enable_compatibility_mode(disable_warnings=True, **processing.compatibility_kwargs())
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
    except Exception as e:
        reason = str(e).split(". ")[0]
        raise ModelLoadError(f"{_model_type(bridge)}: TransformerLens 4.3 cannot hook this family's attention per head, "
                             f"so its heads cannot be circuit nodes ({reason})") from e
    info = model_info(bridge)
    needed = [hooks.INPUT, hooks.resid_post(info.n_layers - 1)]
    for layer in range(info.n_layers):
        needed += [hooks.head_result(layer)] + [hooks.head_input(layer, p) for p in "qkv"]
        if info.has_mlp:
            needed += [hooks.mlp_in(layer), hooks.mlp_out(layer)]
    missing = [n for n in needed if n not in bridge.hook_dict]
    if missing:
        raise ModelLoadError(f"{info.architecture} lacks the hooks circuit discovery needs: {missing[:4]}")
    # One tiny forward pass proves the per-head hooks fire with per-head shapes.
    seen = {}

    def record(key):
        def hook(x, hook):
            seen[key] = tuple(x.shape)
        return hook

    with torch.no_grad(), bridge.hooks(fwd_hooks=[(hooks.head_result(0), record("r")), (hooks.head_input(0, "q"), record("q"))]):
        bridge(torch.zeros(1, 2, dtype=torch.long, device=next(bridge.parameters()).device))
    for key in ("r", "q"):
        if key not in seen or len(seen[key]) != 4 or seen[key][2] != info.n_heads:
            raise ModelLoadError(f"{info.architecture}: per-head hooks did not take effect (saw {seen})")
    _check_additive(bridge, info)


@contextmanager
def shared_qkv_input(model: nn.Module):
    """Run with every head's q, k and v read from the one residual stream (no per-head q/k/v input hooks) on a bridge
    that splits them, restoring the split afterwards: for passes that patch no head input (the ablated cache), which
    then cost about half as much. Any other model runs as it is."""
    split = bool(getattr(getattr(model, "cfg", None), "use_split_qkv_input", False))
    if not (split and is_bridge(model)):
        yield model
        return
    model.set_use_split_qkv_input(False)
    try:
        yield model
    finally:
        model.set_use_split_qkv_input(True)


def _model_type(bridge: nn.Module) -> str:
    """'Gemma2ForCausalLM (model type gemma2)': the names a user knows the family by."""
    hf_config = getattr(getattr(bridge, "original_model", None), "config", None)
    model_type = getattr(hf_config, "model_type", None)
    return f"{bridge.cfg.architecture}" + (f" (model type {model_type})" if model_type else "")


@torch.no_grad()
def _check_additive(bridge: nn.Module, info: ModelInfo) -> None:
    """Edges assume each block adds its heads' results and its MLP output to the residual stream:
    resid_post(l) - resid_pre(l) == sum_h result(l, h) + mlp_out(l) + a constant (the attention output bias,
    which no head owns and no ablation touches). A norm after attention (Gemma 2/3, OLMo 2) breaks that, and
    TransformerLens has no per-head hook after it: refuse such models."""
    names = [hooks.head_result(layer) for layer in range(info.n_layers)]
    names += [hooks.resid_pre(layer) for layer in range(info.n_layers)] + [hooks.resid_post(layer) for layer in range(info.n_layers)]
    names += [hooks.mlp_out(layer) for layer in range(info.n_layers)] if info.has_mlp else []
    tokens = (torch.arange(8, device=next(bridge.parameters()).device) * 7 + 1)[None] % info.d_vocab
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in names)
    for layer in range(info.n_layers):
        added = cache[hooks.resid_post(layer)] - cache[hooks.resid_pre(layer)]
        parts = cache[hooks.head_result(layer)].sum(2) + (cache[hooks.mlp_out(layer)] if info.has_mlp else 0)
        rest = added - parts  # [1, pos, d_model]: the same at every position when the block is additive
        error = float((rest - rest[:, :1]).abs().max())
        if error > 1e-3 * max(1.0, float(added.abs().max())):
            raise ModelLoadError(
                f"{_model_type(bridge)}: layer {layer}'s per-head results and MLP output do not add up to what the block "
                f"writes to the residual stream (max error {error:.3g}); a norm after attention or the MLP (as in Gemma 2/3 "
                "and OLMo 2) makes heads inseparable, so this family is not supported for circuit discovery")


def _finish(model: nn.Module, device, dtype) -> nn.Module:
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def _offline(offline: bool | None) -> bool:
    return bool(offline) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_path(name: str) -> bool:
    """True when `name` can only mean a local path, so it is never sent to the hub: it exists, starts with
    `.`, `~` or `/`, holds a backslash, ends with `/`, has more than one `/`, its first part (`in` of
    `in/m`) is a local directory, or it is not shaped like a hub id (`name` or `org/name`)."""
    if name.startswith((".", "~")) or os.path.isabs(name) or "\\" in name or name.endswith("/"):
        return True
    if Path(name).exists():
        return True
    parts = name.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir()) or not _HUB_ID.match(name)


def load_model(spec, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               processing: Processing | str = Processing.NONE, offline: bool | None = None,
               tolerance: float = EQUIVALENCE_TOLERANCE, device_map: str | dict | None = None,
               max_memory: dict | None = None, offload_folder: str | Path | None = None) -> nn.Module:
    """A hooked model in eval mode from a zoo name, a local directory, a hub name or an in-memory model.

    - `SmallTransformer` or a directory it saved: used as is.
    - Hugging Face `PreTrainedModel` (in memory), a local HF directory or a hub id: wrapped in a
      TransformerBridge with `processing` (see `Processing`; default none), then checked on a probe batch
      against the HF model (`tolerance` on log-probabilities; EquivalenceError when it differs). A
      checkpoint with missing or unexpected tensors is refused, naming them.
    - A name a registered model source claims (`acdc_lite.registry.MODEL_SOURCES`), e.g. `tracr-reverse`:
      a compiled RASP program from `acdc_lite.tracr` (needs `pip install 'acdc-lite[tracr]'`; checked against
      tracr's own forward pass).
    - Any other string: a zoo name; a local path (see `looks_like_path`: never sent to the hub); else a hub
      id, taken from the local Hugging Face cache if there, otherwise tried once on the hub unless `offline`
      (or HF_HUB_OFFLINE) is set.
    - `device_map` / `max_memory` / `offload_folder` (see `Placement`): a Hugging Face checkpoint loaded through
      accelerate, e.g. some layers on disk (`device_map="auto"` with `max_memory={"cpu": "200MB"}`); weights
      stay where accelerate put them (`dtype` is passed to from_pretrained; `device` is refused).
    The model carries a `ModelSource` (`model_source(model)`) that circuits record.
    """
    processing = Processing(processing)
    placement = Placement(device_map, max_memory, None if offload_folder is None else str(offload_folder))
    if placement.active and device is not None:
        raise ModelLoadError("device and device_map both place the model; give one (device_map='auto' uses every device)")
    if not placement.active and (max_memory is not None or offload_folder is not None):
        raise ModelLoadError("max_memory and offload_folder only apply with a device_map (e.g. device_map='auto')")
    model, source = _load(spec, processing, offline, tolerance, placement, dtype)
    model.acdc_source = source
    # accelerate placed the weights when placement is active; moving them would undo that
    model = model.eval() if placement.active else _finish(model, device, dtype)
    if is_bridge(model):
        model.acdc_block_tuple = probe_suffix(model)  # None: no suffix passes (see acdc_lite.suffix)
    return model


def _load(spec, processing: Processing, offline: bool | None, tolerance: float, placement: Placement = Placement(),
          dtype: torch.dtype | None = None) -> tuple[nn.Module, ModelSource]:
    if placement.active and not isinstance(spec, (str, Path)) and not offload.is_offloaded(spec):
        raise ModelLoadError(f"device_map places a checkpoint as it is loaded; this {type(spec).__name__} is already in "
                             "memory: pass its directory or hub name instead (or dispatch it with accelerate first)")
    if isinstance(spec, SmallTransformer):
        source = getattr(spec, "acdc_source", None)
        return spec, source if isinstance(source, ModelSource) else ModelSource(SourceKind.IN_MEMORY, "SmallTransformer")
    if isinstance(spec, nn.Module):
        if is_bridge(spec):
            _enable_circuit_hooks(spec, processing)
            return spec, ModelSource(SourceKind.IN_MEMORY, "TransformerBridge", processing=processing)
        name = getattr(spec.config, "name_or_path", "") or "in-memory"
        bridge, eq = _bridge_from_hf(spec, name, processing, tolerance=tolerance)
        return bridge, ModelSource(SourceKind.IN_MEMORY, type(spec).__name__, processing=processing, equivalence=eq)
    if not isinstance(spec, (str, Path)):
        raise ModelLoadError(f"cannot load a model from {type(spec).__name__}; pass a name, a directory or a model")

    from acdc_lite import zoo

    name = str(spec)
    source = claiming(MODEL_SOURCES, name)
    if source is not None:
        try:
            model = source.load(name)
        except (ImportError, KeyError) as e:
            raise ModelLoadError(f"cannot load {name!r}: {e.args[0]}") from e
        return model, ModelSource(SourceKind.REGISTERED, name, equivalence=getattr(model, "acdc_equivalence", None))
    if placement.active and source is not None:
        raise ModelLoadError(f"{name} is not a Hugging Face checkpoint, so it cannot be placed with device_map; load it "
                             "without device_map, max_memory and offload_folder")
    if zoo.exists(name):
        model, source = _load_dir(zoo.model_dir(name), name, processing, tolerance, placement, dtype)
        return model, ModelSource(SourceKind.ZOO, name, None, source.processing, source.equivalence)
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            parent = path.parent if str(path.parent) not in ("", ".") else Path(".")
            hint = (f"{parent} holds {', '.join(sorted(p.name for p in parent.iterdir() if not p.name.startswith('.'))[:8]) or 'nothing'}"
                    if parent.is_dir() else f"{parent} does not exist either")
            raise ModelLoadError(f"no model directory {name!r} ({hint}); a path is never looked up on the hub")
        if not path.is_dir():
            raise ModelLoadError(f"{name!r} is a file, not a model directory or model name")
        model, source = _load_dir(path, name, processing, tolerance, placement, dtype)
        return model, source
    return _load_hub(name, processing, offline, tolerance, placement, dtype)


def _load_dir(path: Path, given: str, processing: Processing, tolerance: float, placement: Placement = Placement(),
              dtype: torch.dtype | None = None) -> tuple[nn.Module, ModelSource]:
    resolved = str(path.resolve())
    if SmallTransformer.is_model_dir(path):
        if placement.active:
            raise ModelLoadError(f"{given} is a SmallTransformer, not a Hugging Face checkpoint, so it cannot be placed "
                                 "with device_map; load it without device_map, max_memory and offload_folder")
        return SmallTransformer.from_dir(path), ModelSource(SourceKind.LOCAL, given, resolved)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} holds no config.json: not a model directory (a Hugging Face model saved "
                             "with save_pretrained, or a SmallTransformer saved with .save)")
    bridge, eq = _load_hf(path, path.name, processing, tolerance, local_files_only=True, placement=placement, dtype=dtype)
    return bridge, ModelSource(SourceKind.LOCAL, given, resolved, processing, eq)


@contextmanager
def _quiet_transformers():
    """transformers' own loading report (the MISSING/UNEXPECTED table) off: we raise our own error instead."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _few(names) -> str:
    names = sorted(map(str, names))
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def check_loading_info(info: dict, where: str) -> None:
    """ModelLoadError naming the tensors a checkpoint lacks, has in excess, or has with the wrong shape."""
    missing, unexpected = info.get("missing_keys") or (), info.get("unexpected_keys") or ()
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()]
    problems = [f"{len(v)} {label}: {_few(v)}" for label, v in
                (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", mismatched)) if v]
    if problems:
        raise ModelLoadError(f"{where}: the weights do not match its config.json ({'; '.join(problems)}); refusing to "
                             "fill them with random values. Re-save the complete model with save_pretrained")


def _load_hf(ref, name: str, processing: Processing, tolerance: float, local_files_only: bool,
             placement: Placement = Placement(), dtype: torch.dtype | None = None) -> tuple[nn.Module, Equivalence]:
    """An HF checkpoint (directory or hub id) -> checked bridge; ModelLoadError if it cannot be had."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placed = placement.kwargs()
    if placement.active:
        if processing is not Processing.NONE:
            raise ModelLoadError(f"{name}: {processing.value!r} weight processing cannot run on weights placed with "
                                 "device_map (offloaded modules hold none); use processing='none'")
        if dtype is not None:
            placed["dtype"] = dtype
    with _quiet_transformers():
        try:
            hf, info = AutoModelForCausalLM.from_pretrained(ref, local_files_only=local_files_only, output_loading_info=True,
                                                            **placed)
        except Exception as e:
            if placement.active and isinstance(e, (ImportError, ValueError, KeyError, TypeError)):
                raise ModelLoadError(f"cannot place {name} with device_map={placement.device_map!r}, max_memory="
                                     f"{placement.max_memory!r} (accelerate must be installed): {e}") from e
            raise CheckpointUnreadable(f"cannot load the Hugging Face model in {ref}: {e}") from e
        check_loading_info(info, str(ref))
        tokenizer = None
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_files_only)
        except Exception:
            log.info("no tokenizer in %s: text prompts need token ids", ref)
    if tokenizer is not None and len(tokenizer) < 2:  # built from the config alone, with no vocabulary files
        log.info("the tokenizer in %s has no vocabulary: text prompts need token ids", ref)
        tokenizer = None
    bridge, eq = _bridge_from_hf(hf.eval(), name, processing, tokenizer, tolerance)
    bridge.acdc_name = name
    return bridge, eq


def _load_hub(name: str, processing: Processing, offline: bool | None, tolerance: float, placement: Placement = Placement(),
              dtype: torch.dtype | None = None) -> tuple[nn.Module, ModelSource]:
    """From the local HF cache if there; else one quiet attempt on the hub (none when offline)."""
    from acdc_lite import zoo

    unknown = f"unknown model {name!r}: not a zoo model ({', '.join(zoo.names())}), not a local directory, and "
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")  # a file lookup; from_pretrained would contact the hub
    if isinstance(cached, str):
        try:
            bridge, eq = _load_hf(Path(cached).parent, name, processing, tolerance, local_files_only=True,
                                  placement=placement, dtype=dtype)
            return bridge, ModelSource(SourceKind.HUB, name, processing=processing, equivalence=eq)
        except CheckpointUnreadable:
            log.info("%r is only partly in the local Hugging Face cache", name)
    if _offline(offline):
        raise ModelLoadError(unknown + "not in the local Hugging Face cache (offline: HF_HUB_OFFLINE or --offline is set)")
    from huggingface_hub import HfApi

    log.warning("trying the Hugging Face hub once for %r (set HF_HUB_OFFLINE=1 or pass --offline to skip)", name)
    try:
        HfApi().model_info(name, timeout=10)  # one request, no retries
    except Exception as e:
        raise ModelLoadError(unknown + f"the hub could not provide it ({type(e).__name__}). Offline? Save it with "
                             "save_pretrained on a machine with access and pass that directory") from e
    bridge, eq = _load_hf(name, name, processing, tolerance, local_files_only=False, placement=placement, dtype=dtype)
    return bridge, ModelSource(SourceKind.HUB, name, processing=processing, equivalence=eq)
