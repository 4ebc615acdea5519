#!/usr/bin/env bash
# Set up the workbench in .venv/ (the README's first command runs this, then `workbench run`).
set -euo pipefail
cd "$(dirname "$0")"
# A headless Chromium lets kaleido export the figures as PNG; without it they are HTML only.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: could not install chromium; figures will be written as HTML only" >&2
fi
python3 -m venv .venv
# torch is pinned to the CPU build here; on a GPU machine, install your own torch first and drop the pin.
if ! .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 -e '.[dev,figures,notebooks]' > .venv/install.log 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" .venv/install.log >&2
  exit 1
fi
# JupyterLab reads labconfig/ from every Jupyter config folder, the venv's etc/jupyter among them:
# this default-viewer setting makes a double click open notebooks/*.py as a notebook (Jupytext Notebook).
install -D -m 644 .jupyter/labconfig/default_setting_overrides.json .venv/etc/jupyter/labconfig/default_setting_overrides.json
.venv/bin/python -c "import torch, transformer_lens; print('setup: torch', torch.__version__, '· transformer-lens', transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '3.x')"
