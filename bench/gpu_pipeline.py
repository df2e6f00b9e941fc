"""The face pipeline end to end (decode, detect, align, embed) on LFW photos and on large photos made from
them, in one or more processes sharing the machine's GPU: photos/s, faces/s and time per stage.

    python -m bench.gpu_pipeline --out var/gpu/results.json [--processes N] [--lfw-photos N] ...

Run by bench/gpu.sh on the GPU machine (see there for what it carries). Each process runs its own
FacePipeline on its share of the photos, with its own decode processes; after a warm-up pass (which
compiles the backend's functions for these shapes) all start together at a barrier, and the figure is
all photos over the time from the first start to the last end. More than one process per GPU is for the
CPU side: detection's box arithmetic and suppression (about 1.1 ms per LFW photo on one core) and
alignment (0.5 to 0.8 ms per face) run on the host, so one process cannot feed an H200 with 10,000 photos/s.
"""

from __future__ import annotations

import argparse
import importlib.abc
import io
import json
import multiprocessing
import os
import queue
import sys
import tarfile
import time
from pathlib import Path

SAMPLE = Path("var/gpu/lfw-sample.tar")


def read_sample(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def large_photos(sample: list[tuple[str, bytes]], count: int) -> list[tuple[str, bytes]]:
    """Grids of 4x4, 6x6 and 8x8 LFW photos: 1, 2.25 and 4 megapixels with 16 to 64 faces, as JPEG."""
    from PIL import Image

    photos = []
    for index in range(count):
        side = (4, 6, 8)[index % 3]
        grid = Image.new("RGB", (250 * side, 250 * side))
        for k in range(side * side):
            data = sample[(index * 64 + k) % len(sample)][1]
            grid.paste(Image.open(io.BytesIO(data)).convert("RGB"), (250 * (k % side), 250 * (k // side)))
        buffer = io.BytesIO()
        grid.save(buffer, "JPEG", quality=90)
        photos.append((f"large/{index}_{side}x{side}.jpg", buffer.getvalue()))
    return photos


class NoTensorFlow(importlib.abc.MetaPathFinder):
    """An import finder under which TensorFlow is not installed."""

    def find_spec(self, name: str, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def run_share(index: int, options: dict, barrier, results) -> None:
    """One process: its share of each photo set through its own pipeline, timed between barriers."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        # As on the GPU machine: TensorFlow cannot be imported. (A None in sys.modules would not do:
        # Keras takes "tensorflow" in sys.modules to mean that TensorFlow is loaded.)
        sys.meta_path.insert(0, NoTensorFlow())
    import keras

    from pipeline.detect import FaceDetector
    from pipeline.face_resnet import FaceResNetEmbedder
    from pipeline.faces import FacePipeline

    device = options["device"] or None
    pipeline = FacePipeline(
        FaceDetector(batch_size=options["detect_batch"], device=device),
        FaceResNetEmbedder(options["cache_dir"], batch_size=options["embed_batch"], mirror=options["mirror"],
                           device=device),
        batch_size=options["batch"], decode_processes=options["decode_processes"])
    sample = read_sample(Path(options["sample"]))
    sets = {"lfw": [sample[i % len(sample)] for i in range(options["lfw_photos"])],
            "large": large_photos(sample, options["large_photos"])}
    report = {"backend": keras.backend.backend(), "embedder": pipeline.embedder_name}
    for name, photos in sets.items():
        share = photos[index::options["processes"]]
        list(pipeline.process_stream(share[:options["batch"]]))  # compiles for these shapes
        barrier.wait()
        start = time.time()
        found = list(pipeline.process_stream(share))
        end = time.time()
        report[name] = {"photos": len(share), "faces": sum(len(r.faces) for r in found),
                        "errors": sum(r.error is not None for r in found), "start": start, "end": end,
                        "stage_ms": {k: round(v, 1) for k, v in pipeline.timings_ms.items()}}
        barrier.wait()
    pipeline.close()
    results.put((index, report))


def combined(reports: list[dict], name: str) -> dict:
    """All processes' figures for one photo set: photos over the time from the first start to the last end."""
    rows = [report[name] for report in reports]
    seconds = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    photos, faces = sum(r["photos"] for r in rows), sum(r["faces"] for r in rows)
    return {"photos": photos, "faces": faces, "errors": sum(r["errors"] for r in rows),
            "seconds": round(seconds, 2), "photos_per_s": round(photos / seconds, 1),
            "faces_per_s": round(faces / seconds, 1),
            "stage_ms_per_process": [r["stage_ms"] for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the JSON goes")
    parser.add_argument("--sample", default=str(SAMPLE), help="tar of LFW photos (bench/gpu.sh prepare)")
    parser.add_argument("--cache-dir", default=os.environ.get("FACEREC_CACHE_DIR", "var/gpu/cache"))
    parser.add_argument("--processes", type=int, default=1, help="pipelines sharing the GPU")
    parser.add_argument("--decode-processes", type=int, default=0, help="per pipeline; 0: on its detection thread")
    parser.add_argument("--lfw-photos", type=int, default=20000)
    parser.add_argument("--large-photos", type=int, default=48)
    parser.add_argument("--batch", type=int, default=256, help="photos per pipeline batch")
    parser.add_argument("--detect-batch", type=int, default=32)
    parser.add_argument("--embed-batch", type=int, default=1024)
    parser.add_argument("--device", default="", help='e.g. "gpu:0"; empty: the backend\'s choice')
    parser.add_argument("--no-mirror", dest="mirror", action="store_false")
    options = vars(parser.parse_args())
    out = options.pop("out")
    options["cache_dir"] = str(options["cache_dir"])
    if options["processes"] > 1 and os.environ.get("KERAS_BACKEND") == "jax":
        # JAX takes 75% of the GPU's memory per process by default: share it out instead.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / options['processes']:.3f}")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(options["processes"]), context.Queue()
    workers = [context.Process(target=run_share, args=(i, options, barrier, results))
               for i in range(options["processes"])]
    for worker in workers:
        worker.start()
    received = []
    while len(received) < len(workers):
        try:
            received.append(results.get(timeout=5))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:
                for worker in workers:
                    worker.terminate()
                sys.exit(f"a benchmark process failed (exit codes {failed}): see its traceback above")
    for worker in workers:
        worker.join()
    reports = [report for _, report in sorted(received, key=lambda item: item[0])]
    summary = {"backend": reports[0]["backend"], "embedder": reports[0]["embedder"], **options,
               "cores": os.cpu_count(), "lfw": combined(reports, "lfw"), "large": combined(reports, "large")}
    for name in ("lfw", "large"):
        row = summary[name]
        print(name, json.dumps({k: v for k, v in row.items() if k != "stage_ms_per_process"}), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
