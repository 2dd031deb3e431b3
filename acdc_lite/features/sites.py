"""Where a dictionary or a probe reads activations, and where a dictionary's output is written back.

A site is named like a graph node's output (`a1.h0`: that head's result; `m0`: the MLP's output; `input`: token
and position embeddings), `resid L` (the residual stream entering layer L; `resid N` for N layers is the
stream after the last layer, the input of the unembedding), or any hook name of the model
(`blocks.0.hook_attn_out`). A transcoder reads an MLP's input and writes its output (`m0` with `transcoder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from acdc_lite import hooks
from acdc_lite.boundary import UsageError
from acdc_lite.graph import Node, NodeKind
from acdc_lite.padding import forward
from acdc_lite.shape import model_info


class SiteError(UsageError):
    """A site name that does not name an activation of this model; the message lists what does."""


@dataclass(frozen=True)
class Site:
    """name: as given; read: hook whose activation is the input; write: hook the output replaces (== read for an
    autoencoder); head: index into a per-head hook [b, p, head, d] (None for [b, p, d] hooks); node: the graph
    sender whose output this is (None for the residual stream and other hooks)."""

    name: str
    read: str
    write: str
    head: int | None = None
    node: str | None = None

    @property
    def transcoder(self) -> bool:
        return self.read != self.write

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """[b, p, d] activation of this site from the hook's tensor."""
        return x[:, :, self.head] if self.head is not None else x


def parse_site(name: str, model: nn.Module, transcoder: bool = False) -> Site:
    """The `Site` called `name` on `model` (see the module docstring); SiteError with the choices otherwise."""
    info = model_info(model)
    name = name.strip()
    choices = (f"a0.h0..a{info.n_layers - 1}.h{info.n_heads - 1}, " + (f"m0..m{info.n_layers - 1}, " if info.has_mlp else "")
               + f"input, resid 0..resid {info.n_layers}, or a hook name such as {hooks.resid_post(0)}")
    if transcoder:
        node = _node(name)
        if node is None or node.kind is not NodeKind.MLP or not info.has_mlp or not 0 <= node.layer < info.n_layers:
            raise SiteError(f"a transcoder maps an MLP's input to its output: give an MLP site like m0, not {name!r}")
        return Site(name, hooks.mlp_in(node.layer), hooks.mlp_out(node.layer), None, str(node))
    if name.startswith("resid"):
        try:
            layer = int(name.removeprefix("resid").strip())
        except ValueError:
            raise SiteError(f"site {name!r}: write the residual stream as 'resid L' with L in 0..{info.n_layers}") from None
        if not 0 <= layer <= info.n_layers:
            raise SiteError(f"site {name!r}: this model has residual streams resid 0 to resid {info.n_layers}")
        hook = hooks.resid_pre(layer) if layer < info.n_layers else hooks.resid_post(info.n_layers - 1)
        return Site(f"resid {layer}", hook, hook)
    node = _node(name)
    if node is not None:
        ok = (node.kind is NodeKind.INPUT
              or (node.kind is NodeKind.HEAD and 0 <= node.layer < info.n_layers and 0 <= node.head < info.n_heads)
              or (node.kind is NodeKind.MLP and info.has_mlp and 0 <= node.layer < info.n_layers))
        if not ok:
            raise SiteError(f"site {name!r} is not a component of this {info.n_layers}-layer, {info.n_heads}-head model; "
                            f"choose {choices}")
        if node.kind is NodeKind.INPUT:
            return Site(name, hooks.INPUT, hooks.INPUT, None, name)
        if node.kind is NodeKind.HEAD:
            hook = hooks.head_result(node.layer)
            return Site(name, hook, hook, node.head, name)
        return Site(name, hooks.mlp_out(node.layer), hooks.mlp_out(node.layer), None, name)
    if name not in getattr(model, "hook_dict", {}):
        raise SiteError(f"site {name!r} is not a hook or component of this model; choose {choices}")
    return Site(name, name, name)


def _node(name: str) -> Node | None:
    try:
        node = Node.parse(name)
    except (ValueError, KeyError):
        return None
    return None if node.kind is NodeKind.LOGITS else node


@torch.no_grad()
def collect(model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor, site: Site, batch_size: int = 128,
            target: bool = False) -> torch.Tensor:
    """Activations [N, P, d] (float32, on the CPU) of `site` on `tokens` [N, P] run with `mask`; `target`: the
    written hook's activation instead (a transcoder's target)."""
    name = site.write if target else site.read
    head = site.head if not site.transcoder else None
    out = []
    store: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        store["x"] = x.detach()
        return x

    for i in range(0, len(tokens), batch_size):
        with model.hooks(fwd_hooks=[(name, keep)]):
            forward(model, tokens[i:i + batch_size], mask[i:i + batch_size])
        x = store["x"]
        out.append((x[:, :, head] if head is not None else x).float().cpu())
    acts = torch.cat(out)
    if acts.dim() != 3:
        raise SiteError(f"site {site.name!r}: hook {name} gives [{', '.join(map(str, acts.shape))}]-shaped activations; "
                        "a site needs [batch, position, d] (name a head as a0.h1)")
    return acts
