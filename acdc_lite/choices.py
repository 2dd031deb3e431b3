"""The named choices of a run's settings: ablation, weight processing, dtype.

Plain enums and names that import no torch, so a command checks its settings (and refuses a typo) before
loading anything heavy. `acdc_lite.patching` implements the ablations, `acdc_lite.models` the processing.
"""

from __future__ import annotations

from enum import Enum


class Ablation(str, Enum):
    RESAMPLE = "resample"  # the sender's output on the corrupted prompt (default)
    ZERO = "zero"
    MEAN = "mean"  # mean over corrupted prompts and their real (unpadded) positions
    MEAN_POSITIONAL = "mean-positional"  # mean over corrupted prompts, per position (prompts of one length only)

    @classmethod
    def _missing_(cls, value):
        """The field's other names: MIB's `patching` (= resample), `mean_positional` with an underscore."""
        aliases = {"patching": cls.RESAMPLE, "corrupted": cls.RESAMPLE, "mean_positional": cls.MEAN_POSITIONAL}
        return aliases.get(str(value).lower()) if isinstance(value, str) else None


class Processing(Enum):
    """How the bridge treats a Hugging Face checkpoint's weights before hooking them.

    NONE (the default) keeps the checkpoint's own weights: the hooked model computes the checkpoint's
    function by construction, and each head's output keeps its own value bias. TransformerLens 4.3's
    processing decides a matrix's orientation from its shape, so it folds the final LayerNorm into the
    unembedding along the wrong axis (fold_ln) and centres the unembedding along d_model
    (center_unembed) whenever d_vocab == d_model. The others are there for analyses that want
    TransformerLens' coordinates; the load-time equivalence check refuses them where they change the model.
    """

    NONE = "none"
    FOLD_LN = "fold-ln"  # fold LayerNorm scales into the next weights, nothing else
    TRANSFORMER_LENS = "transformer-lens"  # TL 4.3's default: fold_ln, center_writing_weights, center_unembed, fold_value_biases

    def compatibility_kwargs(self) -> dict:
        """Arguments for `TransformerBridge.enable_compatibility_mode`."""
        if self is Processing.NONE:
            return {"no_processing": True}
        if self is Processing.FOLD_LN:
            return {"fold_ln": True, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False}
        return {}


DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")  # torch dtypes a model can be loaded in (float32 default)
