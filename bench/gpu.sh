#!/usr/bin/env bash
# The embedding and end-to-end benchmarks on a GPU machine, in under 5 minutes:
# prints faces/s, images/s and which device TensorFlow used. Run from the repository root
# with the project's requirements installed (plus tensorflow[and-cuda] for the GPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2

echo "== devices"
"$PY" -c "import tensorflow as tf; print('tensorflow', tf.__version__, 'GPUs:', tf.config.list_physical_devices('GPU'))"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"

echo "== embedding (faces/s, Keras model against dlib-bin)"
timeout 150 "$PY" -m bench.embedding | tail -n 4

echo "== end to end (images/s; the 7 LFW people with at least 70 photos, to stay within the time)"
timeout 240 "$PY" -m bench.e2e --min-photos 70 | tail -n 8
