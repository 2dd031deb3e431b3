"""Models larger than memory: per-head hooks on accelerate-offloaded modules (a workaround, ready to drop).

`load_model(..., device_map=..., max_memory=..., offload_folder=...)` loads a Hugging Face checkpoint through
accelerate, which keeps some modules' weights on disk or in CPU memory (their parameters sit on the `meta`
device and an `AlignDevicesHook` fills them in for the module's own forward). TransformerLens 4.3's per-head
paths read those weights outside the module's forward: the split q/k/v input projection
(`AttentionBridge._project_per_head_qkv`) refuses meta weights, and the per-head result
(`_compute_per_head_result`) multiplies by them ("Tensor on device cpu is not on the expected device meta").
Its default weight processing refuses offloaded weights too, so offloaded models load with `processing="none"`.

The fix here: on each attention bridge whose projections are offloaded, run those two methods inside
`accelerate.utils.align_module_device` of the projection they read. Everything else (embeddings, norms, MLPs,
the attention pattern) runs through the Hugging Face modules' own forward, which accelerate already handles.
Drop this module when TransformerLens reads offloaded weights itself; nothing else depends on its internals.

Joint q/k/v projections (GPT-2's `c_attn`) are split into new modules when the bridge is built, from the
offloaded (meta) weights, so they cannot be refilled: `patch_bridge` refuses such models when offloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["OffloadError", "is_offloaded", "materialized_state", "offloaded_modules", "patch_bridge"]


class OffloadError(ValueError):
    """An offloaded model this workaround cannot hook."""


def _has_offloaded_params(module: nn.Module) -> bool:
    try:
        from accelerate.utils import has_offloaded_params
    except ImportError:  # accelerate absent: nothing can be offloaded
        return False
    return has_offloaded_params(module)


def offloaded_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose own parameters accelerate keeps off-device (disk or CPU offload); a bridge
    component that only forwards to such a module is not listed again."""
    return [name for name, m in model.named_modules() if "_hf_hook" in vars(m) and _has_offloaded_params(m)]


def is_offloaded(model: nn.Module) -> bool:
    return any(_has_offloaded_params(m) for m in model.modules())


def _innermost(module: nn.Module) -> nn.Module:
    """The Hugging Face module a TransformerLens bridge component wraps (the one accelerate hooked)."""
    while getattr(module, "original_component", None) is not None:
        module = module.original_component
    return module


def _aligned(module: nn.Module | None):
    """Context in which `module`'s offloaded weights are real tensors (a no-op for modules that are not offloaded)."""
    if module is None or not _has_offloaded_params(module):
        return contextlib.nullcontext()
    from accelerate.utils import align_module_device

    return align_module_device(module)


def patch_bridge(bridge: nn.Module) -> int:
    """Make the per-head projections of `bridge`'s offloaded attention layers read real weights; returns how
    many attention bridges were patched (0 when nothing is offloaded). Call before any forward pass."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

    patched = 0
    for name, attn in bridge.named_modules():
        if not isinstance(attn, AttentionBridge) or not is_offloaded(attn):
            continue
        if isinstance(attn, JointQKVAttentionBridge):
            raise OffloadError(f"{name}: a joint q/k/v projection (as in GPT-2) cannot be offloaded with per-head hooks "
                               "(TransformerLens splits it once, from the offloaded weights); keep its layers in memory "
                               "(a larger max_memory) or use a model with separate q/k/v projections")
        project, result = attn._project_per_head_qkv, attn._compute_per_head_result

        def project_aligned(linear_bridge, input_4d, n_heads, d_head, _project=project):
            with _aligned(_innermost(linear_bridge)):
                return _project(linear_bridge, input_4d, n_heads, d_head)

        def result_aligned(z_4d, n_heads, d_head, _result=result, _attn=attn):
            with _aligned(_innermost(_attn.o)):
                return _result(z_4d, n_heads, d_head)

        # instance attributes shadow the class's methods for this layer only
        object.__setattr__(attn, "_project_per_head_qkv", project_aligned)
        object.__setattr__(attn, "_compute_per_head_result", result_aligned)
        patched += 1
    return patched


def materialized_state(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of `model.state_dict()` sorted by name, offloaded (meta) entries read back from disk or
    CPU one module at a time: the same names and values as if nothing were offloaded."""
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if tensor.is_meta:
            path, _, attr = name.rpartition(".")
            module = _innermost(model.get_submodule(path))
            with _aligned(module):
                tensor = getattr(module, attr).detach().clone()
        yield name, tensor
