"""Storage clients: what a GET of a small photo costs the reading process's CPU, and how many reads in flight
hide a store's latency, for boto3 and obstore (Rust's object_store) each through Storage.get_many on
threads, as a worker reads (S3Storage's two readers), obstore on asyncio, and aiobotocore (asyncio).

    python -m bench.storage_client [--requests 3000] [--size 9000] [--concurrency 1,8,32,64]
        [--delays-ms 0,20] [--aiobotocore-python PATH]

Objects of --size bytes (an LFW photo is 8.8 KB on average) in a fresh bucket of the local SeaweedFS
(deleted at the end). Each client, concurrency and delay runs in a process of its own, which counts its own
CPU time (user and system, every thread) over --requests GETs after a warm-up: `cpu_ms_per_request` is
what one GET costs the process that makes it, whatever the machine's load; `requests_per_s` depends on the
load (SeaweedFS runs on the same cores). Every request goes through bench.s3_proxy, in this process, which
adds the delay.
aiobotocore pins a botocore older than the project's boto3 needs, so it cannot share the project's
environment: give --aiobotocore-python an interpreter of a virtual environment that has it (else skipped).
The last line printed is the JSON written to bench/results/storage_client.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.output import publish

RESULTS = Path(__file__).resolve().parent / "results" / "storage_client.json"
CLIENTS = ("boto3", "obstore", "obstore-async", "aiobotocore")
WARM_UP = 100  # GETs before counting: connections opened, code paths warmed


def cpu_s() -> float:
    """This process's CPU time so far, every thread's, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_with_storage(reader: str, target: dict, keys: list[str], concurrency: int) -> tuple[int, float]:
    """Storage.get_many on S3Storage with the given reader (boto3, or obstore: the product's read path)."""
    from pipeline.storage import S3Storage

    storage = S3Storage(target["bucket"], target["endpoint_url"], target["access_key_id"],
                        target["secret_access_key"], read_threads=concurrency, reader=reader)
    list(storage.get_many(keys[:WARM_UP]))
    started = cpu_s()
    count = sum(isinstance(data, bytes) for _, data in storage.get_many(keys))
    return count, cpu_s() - started


def obstore_store(target: dict, concurrency: int):
    from obstore.store import S3Store

    return S3Store(target["bucket"], endpoint=target["endpoint_url"], access_key_id=target["access_key_id"],
                   secret_access_key=target["secret_access_key"], region="us-east-1",
                   virtual_hosted_style_request=False,
                   client_options={"allow_http": True, "pool_max_idle_per_host": str(concurrency)})


def read_obstore_async(target: dict, keys: list[str], concurrency: int) -> tuple[int, float]:
    import obstore

    store = obstore_store(target, concurrency)

    async def read_all(batch: list[str]) -> int:
        gate = asyncio.Semaphore(concurrency)

        async def read(key: str) -> bytes:
            async with gate:
                return bytes(await (await obstore.get_async(store, key)).bytes_async())

        return sum(len(data) > 0 for data in await asyncio.gather(*map(read, batch)))

    asyncio.run(read_all(keys[:WARM_UP]))
    started = cpu_s()
    count = asyncio.run(read_all(keys))
    return count, cpu_s() - started


def read_aiobotocore(target: dict, keys: list[str], concurrency: int) -> tuple[int, float]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    async def read_all() -> tuple[int, float]:
        config = AioConfig(max_pool_connections=concurrency, s3={"addressing_style": "path"})
        async with get_session().create_client(
                "s3", endpoint_url=target["endpoint_url"], aws_access_key_id=target["access_key_id"],
                aws_secret_access_key=target["secret_access_key"], region_name="us-east-1", config=config) as client:
            gate = asyncio.Semaphore(concurrency)

            async def read(key: str) -> bytes:
                async with gate:
                    response = await client.get_object(Bucket=target["bucket"], Key=key)
                    async with response["Body"] as body:
                        return await body.read()

            await asyncio.gather(*map(read, keys[:WARM_UP]))
            started = cpu_s()
            count = sum(len(data) > 0 for data in await asyncio.gather(*map(read, keys)))
            return count, cpu_s() - started

    return asyncio.run(read_all())


READERS = {"boto3": functools.partial(read_with_storage, "boto3"),
           "obstore": functools.partial(read_with_storage, "obstore"),
           "obstore-async": read_obstore_async, "aiobotocore": read_aiobotocore}


def child(args: argparse.Namespace) -> int:
    """One measurement, in this process: print {"requests", "wall_s", "cpu_s"}."""
    target = json.loads(args.child_target)
    keys = [f"objects/{i % args.objects:05d}" for i in range(args.requests)]
    started = time.perf_counter()
    count, cpu = READERS[args.child](target, keys, args.child_concurrency)
    wall = time.perf_counter() - started  # includes the warm-up's few requests: a small overstatement
    if count != len(keys):
        raise SystemExit(f"{args.child}: {count} of {len(keys)} reads returned data")
    print(json.dumps({"requests": count, "wall_s": wall, "cpu_s": cpu}))
    return 0


def measure(python: str, client: str, target: dict, concurrency: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [python, "-m", "bench.storage_client", "--child", client, "--child-target", json.dumps(target),
               "--child-concurrency", str(concurrency), "--requests", str(args.requests),
               "--objects", str(args.objects)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{client} x{concurrency} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="GETs counted per measurement")
    parser.add_argument("--objects", type=int, default=500, help="distinct objects, read round robin")
    parser.add_argument("--size", type=int, default=9000, help="bytes per object")
    parser.add_argument("--concurrency", default="1,8,32,64", help="reads in flight, comma-separated")
    parser.add_argument("--delays-ms", default="0,20", help="delay added to every request, comma-separated")
    parser.add_argument("--clients", default=",".join(CLIENTS[:3]), help=f"of {', '.join(CLIENTS)}")
    parser.add_argument("--aiobotocore-python", default="",
                        help="an interpreter that has aiobotocore (measures the aiobotocore client)")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--child-target", help=argparse.SUPPRESS)
    parser.add_argument("--child-concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    from bench.machine import cpu_model
    from bench.s3_proxy import S3Proxy
    from bench.system import S3
    from pipeline.storage import S3Storage

    clients = [c for c in args.clients.split(",") if c]
    if args.aiobotocore_python and "aiobotocore" not in clients:
        clients.append("aiobotocore")
    load_at_start = os.getloadavg()[0]
    storage = S3Storage(f"storage-client-{uuid.uuid4().hex[:10]}", **S3)
    storage.ensure_bucket()
    runs = []
    try:
        payload = os.urandom(args.size)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: storage.put(f"objects/{i:05d}", payload), range(args.objects)))
        for delay_ms in (float(d) for d in args.delays_ms.split(",")):
            # Through the proxy at every delay, 0 included, so that the rates compare.
            with S3Proxy(S3["endpoint_url"], delay_s=delay_ms / 1000) as proxy:
                target = {**S3, "endpoint_url": proxy.url, "bucket": storage.bucket}
                for client in clients:
                    python = args.aiobotocore_python if client == "aiobotocore" else sys.executable
                    if not python:
                        continue
                    for concurrency in (int(c) for c in args.concurrency.split(",")):
                        result = measure(python, client, target, concurrency, args)
                        run = {"client": client, "concurrency": concurrency, "delay_ms": delay_ms,
                               "requests": result["requests"],
                               "requests_per_s": round(result["requests"] / result["wall_s"], 1),
                               "cpu_ms_per_request": round(1000 * result["cpu_s"] / result["requests"], 3),
                               "load_average_1m": round(os.getloadavg()[0], 2)}
                        runs.append(run)
                        print(f"{client:16s} {concurrency:3d} in flight, +{delay_ms:.0f} ms: "
                              f"{run['requests_per_s']:7.1f} GET/s, {run['cpu_ms_per_request']:.3f} ms CPU per GET "
                              f"(load {run['load_average_1m']})", flush=True)
    finally:
        keys = list(storage.list())
        for start in range(0, len(keys), 1000):
            storage.client.delete_objects(Bucket=storage.bucket, Delete={
                "Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})
        storage.client.delete_bucket(Bucket=storage.bucket)

    summary = {"runs": runs, "object_bytes": args.size, "cores": os.cpu_count(), "cpu_model": cpu_model(),
               "load_average_1m_start": round(load_at_start, 2), "load_average_1m_end": round(os.getloadavg()[0], 2)}
    for client in {run["client"] for run in runs}:  # the cost per GET at the concurrency a worker uses
        costs = [run["cpu_ms_per_request"] for run in runs if run["client"] == client and run["concurrency"] >= 8]
        if costs:
            summary[f"{client}_cpu_ms_per_request"] = round(sum(costs) / len(costs), 3)
    # The rate at each added delay against the rate at none, per client and reads in flight: 1 is hidden.
    rates = {(run["client"], run["concurrency"], run["delay_ms"]): run["requests_per_s"] for run in runs}
    summary["latency_hidden_ratio"] = {
        f"{client} x{concurrency} +{delay:.0f} ms": round(rate / rates[(client, concurrency, 0.0)], 2)
        for (client, concurrency, delay), rate in rates.items() if delay and (client, concurrency, 0.0) in rates}
    publish(summary, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
