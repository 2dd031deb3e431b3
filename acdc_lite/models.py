"""Loading hooked models: one entry point for zoo names, local directories, hub names and in-memory models.

Hugging Face models are wrapped in a TransformerLens 4 `TransformerBridge` in compatibility mode with
per-head results, split q/k/v inputs and MLP-input hooks switched on (and checked to have taken
effect). Our own `SmallTransformer` (toy, attention-only and tracr models) has those hooks natively.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from acdc_lite import hooks
from acdc_lite.registry import MODEL_SOURCES, claiming
from acdc_lite.shape import ModelInfo, ModelLoadError, is_bridge, model_info
from acdc_lite.transformer import SmallTransformer

log = logging.getLogger(__name__)

__all__ = ["ModelInfo", "ModelLoadError", "fingerprint", "load_model", "model_info"]


def fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, shape and bytes: identifies the weights, not the object."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _hf_architecture(hf_model: nn.Module) -> str:
    archs = getattr(hf_model.config, "architectures", None)
    return archs[0] if archs else type(hf_model).__name__


def _bridge_from_hf(hf_model: nn.Module, name: str, tokenizer=None) -> nn.Module:
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    arch = _hf_architecture(hf_model)
    try:
        bridge = build_bridge_from_module(hf_model, arch, hf_config=hf_model.config, tokenizer=tokenizer, model_name=name)
    except Exception as e:  # the bridge raises many types for unsupported architectures
        raise ModelLoadError(f"TransformerLens 4 cannot wrap architecture {arch!r}: {e}") from e
    return bridge


def _enable_circuit_hooks(bridge: nn.Module) -> None:
    """Switch on per-head results, split q/k/v inputs and MLP-input hooks, then check they work."""
    try:
        bridge.enable_compatibility_mode()
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
    except Exception as e:
        raise ModelLoadError(f"cannot switch on per-head hooks for {bridge.cfg.architecture}: {e}") from e
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


def _finish(model: nn.Module, device, dtype) -> nn.Module:
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def load_model(spec, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """A hooked model in eval mode from a zoo name, a local directory, a hub name or an in-memory model.

    - `SmallTransformer` or a directory it saved: used as is.
    - Hugging Face `PreTrainedModel` (in memory) or a local HF directory: wrapped in a TransformerBridge.
    - A name a registered model source claims (`acdc_lite.registry.MODEL_SOURCES`), e.g. `tracr-reverse`:
      a compiled RASP program from `acdc_lite.tracr` (needs `pip install 'acdc-lite[tracr]'`).
    - Any other string: a zoo name, else a hub name booted with `TransformerBridge.boot_transformers`.
    """
    if isinstance(spec, SmallTransformer):
        return _finish(spec, device, dtype)
    if isinstance(spec, nn.Module):
        bridge = spec if is_bridge(spec) else _bridge_from_hf(spec, getattr(spec.config, "name_or_path", "") or "in-memory")
        _enable_circuit_hooks(bridge)
        return _finish(bridge, device, dtype)
    if not isinstance(spec, (str, Path)):
        raise ModelLoadError(f"cannot load a model from {type(spec).__name__}; pass a name, a directory or a model")

    from acdc_lite import zoo

    name = str(spec)
    source = claiming(MODEL_SOURCES, name)
    if source is not None:
        try:
            return _finish(source.load(name), device, dtype)
        except (ImportError, KeyError) as e:
            raise ModelLoadError(f"cannot load {name!r}: {e.args[0]}") from e
    if zoo.exists(name):
        return load_model(zoo.model_dir(name), device=device, dtype=dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        if SmallTransformer.is_model_dir(path):
            return _finish(SmallTransformer.from_dir(path), device, dtype)
        if (path / "config.json").is_file():
            return _finish(_load_hf_dir(path), device, dtype)
        raise ModelLoadError(f"{path} holds no config.json: not a model directory (a Hugging Face model saved "
                             "with save_pretrained, or a SmallTransformer saved with .save)")
    if path.exists():
        raise ModelLoadError(f"{name!r} is a file, not a model directory or model name")
    return _finish(_boot_hub(name), device, dtype)


def _load_hf_dir(path: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot load the Hugging Face model in {path}: {e}") from e
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        log.info("no tokenizer in %s: text prompts need token ids", path)
    if tokenizer is not None and len(tokenizer) < 2:  # built from the config alone, with no vocabulary files
        log.info("the tokenizer in %s has no vocabulary: text prompts need token ids", path)
        tokenizer = None
    bridge = _bridge_from_hf(hf.eval(), path.name, tokenizer)
    bridge.acdc_name = path.name
    _enable_circuit_hooks(bridge)
    return bridge


def _boot_hub(name: str) -> nn.Module:
    from transformer_lens.model_bridge import TransformerBridge

    from acdc_lite import zoo

    try:
        bridge = TransformerBridge.boot_transformers(name)
    except Exception as e:
        raise ModelLoadError(
            f"unknown model {name!r}: not a zoo model ({', '.join(zoo.names())}), not a local directory, and "
            f"the hub could not provide it ({type(e).__name__}). Offline? Save it with save_pretrained "
            "on a machine with access and pass that directory."
        ) from e
    bridge.acdc_name = name
    _enable_circuit_hooks(bridge)
    return bridge
