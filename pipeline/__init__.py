"""The face pipeline as a library: decoding, detection, alignment, embedding, models, training,
evaluation and storage of artifacts. It imports neither Celery nor Flask."""

import os

# Before anything imports TensorFlow, which reads it once: its oneDNN kernels, which it turns on by
# itself only on CPUs with AVX512_VNNI or newer. On an AMD EPYC with AVX2 alone they made detection 1.6x
# and the face ResNet 1.2x faster (README, Speed on a CPU). TF_ENABLE_ONEDNN_OPTS=0 turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
