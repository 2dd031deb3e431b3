"""Looking at a model before (and after) searching: activation-patching sweeps, path patching,
validation figures, head detectors, attention figures, logit lens and neurons.

Every function returns values (pandas DataFrames, frozen dataclasses) and, where there is something to
see, a matplotlib `Figure`; `figures` holds the shared plotting and output-folder helpers.
"""
