#!/usr/bin/env bash
# The reproduction (python -m bench.reproduce) on one H200 within a budget, with its report and forest plot:
#   bench/gpu_reproduce.sh OUT_DIR [more bench.reproduce flags]    all arms x 4 seeds, most informative first
#   bench/gpu_reproduce.sh --smoke OUT_DIR [flags]                 the same code on the CPU, a tiny model
# Assets come from $OWLORE_CACHE (here: python -m common.assets; on a machine without the package index:
# bench/stage.py join). The interpreter: $PYTHON, else the Makefile's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3 || command -v python); fi
fi
smoke=()
if [[ "${1:-}" == "--smoke" ]]; then smoke=(--smoke); shift; fi
out="${1:-runs/gpu-reproduce}"
shift || true
if ((${#smoke[@]})); then
  exec "$PYTHON" -m bench.reproduce --smoke --out "$out" "$@"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"  # several runs share the host's cores
exec timeout 570 "$PYTHON" -m bench.reproduce --device cuda --workers "${WORKERS:-8}" --seeds "${SEEDS:-4}" \
  --budget-minutes "${BUDGET_MINUTES:-6.5}" --eval-batch-size 64 --out "$out" "$@"
