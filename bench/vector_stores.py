"""Vector stores for the face index, compared on the same faces: recall@10 against exact search, search
latency (one query at a time, as a search request makes), build time, size on disk and peak memory of the
searching process.

    python -m bench.vector_stores [--faces 1000000] [--queries 500] [--stores lancedb-ivf-pq,faiss-hnsw,...]

The faces are the LFW faces of a bench.search run (--faces-file, default var/bench/lfw-faces.npz) plus
distractors (bench.scale_faces) up to --faces; the queries are LFW subjects' faces. Every store builds in one
child process and is searched in another, fresh one, so that each search figure is what a worker that
opens the saved index pays (ru_maxrss of that child). The last line printed is the JSON written to
bench/results/vector_stores.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_model
from bench.output import publish
from bench.scale_faces import distractors, exact_top_k, load_faces, recall_against, unit
from config import REPO_ROOT
from pipeline.face_index import REFINE_FACTOR, SUB_VECTORS, partitions, probes

RESULTS = REPO_ROOT / "bench" / "results" / "vector_stores.json"
FACES_FILE = REPO_ROOT / "var" / "bench" / "lfw-faces.npz"
K = 10
# lancedb-ivf-hnsw-sq is measured only when asked (--stores): at 1,000,000 faces its build ran past 15 minutes here.
STORES = ("lancedb-ivf-pq", "faiss-hnsw", "faiss-ivf-flat", "usearch-hnsw")


# -- the stores: build(vectors, folder) and open(folder) -> search(query, k) -> row numbers ------------

def lancedb_build(vectors: np.ndarray, folder: Path, index_type: str) -> None:
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfHnswSq, IvfPq

    table = lancedb.connect(folder).create_table("faces", schema=pa.schema([
        pa.field("row", pa.int64()), pa.field("vector", pa.list_(pa.float32(), vectors.shape[1]))]))
    for start in range(0, len(vectors), 100_000):
        part = vectors[start:start + 100_000]
        table.add(pa.table({"row": np.arange(start, start + len(part)),
                            "vector": pa.FixedSizeListArray.from_arrays(part.ravel(), vectors.shape[1])}))
    if index_type == "IVF_PQ":
        table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=partitions(len(vectors)),
                                                  num_sub_vectors=SUB_VECTORS))
    else:
        table.create_index("vector", config=IvfHnswSq(distance_type="cosine",
                                                      num_partitions=max(1, len(vectors) // 250_000)))


def lancedb_open(folder: Path, index_type: str):
    import lancedb

    table = lancedb.connect(folder).open_table("faces")
    nprobes = probes(partitions(table.count_rows()))

    def search(query: np.ndarray, k: int) -> list[int]:
        q = table.search(query).distance_type("cosine").limit(k).select(["row"])
        # The face index's settings (pipeline.face_index): a share of the partitions, the best 10 k re-ranked.
        q = q.nprobes(nprobes).refine_factor(REFINE_FACTOR) if index_type == "IVF_PQ" else q.nprobes(4).ef(150)
        return q.to_arrow()["row"].to_pylist()

    return search


def faiss_build(vectors: np.ndarray, folder: Path, kind: str) -> None:
    import faiss

    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
    else:
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], max(1, int(np.sqrt(len(vectors)))),
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 100_000), False)])
    index.add(vectors)
    faiss.write_index(index, str(folder / "faces.faiss"))


def faiss_open(folder: Path, kind: str):
    import faiss

    index = faiss.read_index(str(folder / "faces.faiss"))
    if kind == "hnsw":
        index.hnsw.efSearch = 128
    else:
        index.nprobe = probes(index.nlist)  # the share of the lists the face index probes
    faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead

    def search(query: np.ndarray, k: int) -> list[int]:
        return index.search(query[None, :], k)[1][0].tolist()

    return search


def usearch_build(vectors: np.ndarray, folder: Path) -> None:
    from usearch.index import Index

    index = Index(ndim=vectors.shape[1], metric="cos", dtype="f32", connectivity=16, expansion_add=128)
    index.add(np.arange(len(vectors)), vectors)
    index.save(str(folder / "faces.usearch"))


def usearch_open(folder: Path):
    from usearch.index import Index

    index = Index.restore(str(folder / "faces.usearch"), view=True)  # memory-mapped, as a worker would
    index.expansion_search = 128

    def search(query: np.ndarray, k: int) -> list[int]:
        return index.search(query, k).keys.tolist()

    return search


BUILD = {
    "lancedb-ivf-pq": lambda v, f: lancedb_build(v, f, "IVF_PQ"),
    "lancedb-ivf-hnsw-sq": lambda v, f: lancedb_build(v, f, "IVF_HNSW_SQ"),
    "faiss-hnsw": lambda v, f: faiss_build(v, f, "hnsw"),
    "faiss-ivf-flat": lambda v, f: faiss_build(v, f, "ivf"),
    "usearch-hnsw": usearch_build,
}
OPEN = {
    "lancedb-ivf-pq": lambda f: lancedb_open(f, "IVF_PQ"),
    "lancedb-ivf-hnsw-sq": lambda f: lancedb_open(f, "IVF_HNSW_SQ"),
    "faiss-hnsw": lambda f: faiss_open(f, "hnsw"),
    "faiss-ivf-flat": lambda f: faiss_open(f, "ivf"),
    "usearch-hnsw": usearch_open,
}
WHAT_IT_IS = {
    "lancedb-ivf-pq": "a store: files on disk or S3, rows with columns, filters, deletes, versions, merge-insert",
    "lancedb-ivf-hnsw-sq": "the same store, HNSW graphs inside IVF partitions over 8-bit vectors",
    "faiss-hnsw": "an in-memory index: persistence, metadata, filters, deletes and S3 left to us",
    "faiss-ivf-flat": "an in-memory index: persistence, metadata, filters, deletes and S3 left to us",
    "usearch-hnsw": "a single-file index (memory-mapped): metadata, filters and S3 left to us",
}


def child(mode: str, store: str, folder: Path, data: Path) -> None:
    """Run in a fresh process: build the store from data (vectors.npy), or search it with data's queries."""
    if mode == "build":
        vectors = np.load(data / "vectors.npy", mmap_mode="r")
        started = time.perf_counter()
        BUILD[store](np.ascontiguousarray(vectors), folder)
        answer = {"build_s": time.perf_counter() - started}
    else:
        queries = np.load(data / "queries.npy")
        search = OPEN[store](folder)
        for query in queries[:20]:  # warm up: the first searches read the index's structure
            search(query, K)
        found, times = [], []
        for query in queries:
            started = time.perf_counter()
            found.append(search(query, K))
            times.append((time.perf_counter() - started) * 1000)
        answer = {"found": found, "times_ms": times, "peak_rss_mb": peak_rss_mb()}
    print(json.dumps(answer))


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM: unlike ru_maxrss, not inherited from
    the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(mode: str, store: str, folder: Path, data: Path) -> dict:
    command = [sys.executable, "-m", "bench.vector_stores", "--child", mode, store, str(folder), str(data)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"{store} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=200_000, help="faces in each index (LFW's plus distractors)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--faces-file", type=Path, default=FACES_FILE)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the indexes are built (default: a temp dir)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "STORE", "FOLDER", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, store, folder, data = args.child
        child(mode, store, Path(folder), Path(data))
        return 0

    load_start = os.getloadavg()[0]
    faces = load_faces(args.faces_file)
    real = unit(faces["embeddings"])
    vectors = np.vstack([real, distractors(real, max(0, args.faces - len(real)))]) if args.faces > len(real) else real
    subjects = np.flatnonzero(faces["main"])
    queries = real[np.random.default_rng(1).choice(subjects, min(args.queries, len(subjects)), replace=False)]
    print(f"{len(vectors):,} faces ({len(real):,} LFW), {len(queries)} queries; exact search...", flush=True)
    truth = exact_top_k(vectors, queries, K)
    results = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        data = Path(work) / "data"
        data.mkdir()
        np.save(data / "vectors.npy", vectors)
        np.save(data / "queries.npy", queries)
        del vectors
        for store in args.stores.split(","):
            folder = Path(work) / store
            folder.mkdir()
            built = run_child("build", store, folder, data)
            searched = run_child("search", store, folder, data)
            times = np.array(searched["times_ms"])
            results[store] = {
                "what": WHAT_IT_IS[store],
                "recall_at_10": round(recall_against(searched["found"], truth), 4),
                "search_p50_ms": round(float(np.percentile(times, 50)), 2),
                "search_p95_ms": round(float(np.percentile(times, 95)), 2),
                "search_p99_ms": round(float(np.percentile(times, 99)), 2),
                "build_s": round(built["build_s"], 1),
                "index_mb": round(folder_mb(folder), 1),
                "peak_rss_mb": round(searched["peak_rss_mb"], 1),
            }
            print(store, json.dumps(results[store]), flush=True)
            shutil.rmtree(folder)
    summary = {"faces": args.faces, "queries": len(queries), "k": K, "distractors": "perturbed copies of LFW "
               "embeddings (bench.scale_faces)", "stores": results, "cores": os.cpu_count(),
               "cpu_model": cpu_model(), "load_average_1m_start": round(load_start, 2),
               "load_average_1m_end": round(os.getloadavg()[0], 2)}
    publish(summary, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
