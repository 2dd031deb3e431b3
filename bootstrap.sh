#!/usr/bin/env bash
# Set up acdc-lite from nothing: a virtualenv in .venv, the CPU build of torch 2.13.0 first
# (a bare torch requirement would pull a multi-GB CUDA build), the package with its dev, tracr, features, probe and
# sweep extras (tracr-pypi + jax on CPU: about 10 s more; eai-sparsify and scikit-learn: a few seconds; ray and
# submitit: about 12 s),
# and graphviz's `dot` for rendering when it is missing and apt is available.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,tracr,features,probe,sweep]"
if ! command -v dot >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "bootstrap: could not install graphviz; rendering to SVG will be unavailable" >&2
fi
