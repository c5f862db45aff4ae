#!/usr/bin/env bash
# The GPU check of issue 12, one JSON out, at most 8 minutes on an H200:
#   bench/gpu_check.sh [OUT.json]            (a) 7B-shaped steps, (b) train.py on SmolLM2-135M, (c) ARC-Easy eval
#   bench/gpu_check.sh --cpu-smoke [OUT.json] the same code on tiny shapes, on the CPU
# Needs the assets of `python -m common.assets` (SmolLM2 GGUF, tokenizers, validation sets) under $OWLORE_CACHE
# (default ~/.cache/owlore; on a machine without the package index: bench/stage.py). PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=()
if [[ "${1:-}" == "--cpu-smoke" ]]; then smoke=(--cpu-smoke); shift; fi
out="${1:-gpu_check.json}"
if [[ -z "${PYTHON:-}" ]]; then  # as the Makefile: its .venv here, the machine's python3 elsewhere
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3 || command -v python); fi
fi
exec timeout 480 "$PYTHON" -m bench.gpu_check "${smoke[@]}" --out "$out" ${GPU_CHECK_ARGS:-}
