"""The model with a dictionary's reconstruction in place of its site's activation (a context manager)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def spliced(model: nn.Module, dictionary):
    """Within the block (`dictionary`: an `acdc_lite.features.sae.Dictionary`) every forward pass of `model`
    replaces the activation at `dictionary.site` by the
    dictionary's reconstruction (a transcoder's output from the MLP's input, an autoencoder's from the activation
    itself), at every position. Hooks are removed on exit, also on errors."""
    site = dictionary.site
    seen: dict[str, torch.Tensor] = {}

    def write(x, hook):
        source = seen.pop("input") if site.transcoder else site.take(x)
        recon = dictionary.reconstruct(source).to(x.dtype)
        if site.head is None:
            return recon
        x = x.clone()
        x[:, :, site.head] = recon
        return x

    def read(x, hook):
        seen["input"] = x
        return x

    fwd = ([(site.read, read)] if site.transcoder else []) + [(site.write, write)]
    with model.hooks(fwd_hooks=fwd):
        yield model
