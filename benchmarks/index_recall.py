"""Recall@10 of the IVF index against exact search on CIFAR-10 train (50,000 rows), and exact
search latency as the row count grows (what sets ``FLAT_MAX_ROWS`` and ``DEFAULT_NPROBE``).

    nice -n 10 python benchmarks/index_recall.py

Embeds cifar10:train (the index) and cifar10:test (10,000 queries) with the seed's random-init
ResNet-18 (512-d) into ~/ssl-zoo-runs/index-bench (a rerun resumes or reuses them), builds the exact
index (IndexFlatIP) and the IVF-Flat index (nlist = 4 sqrt(N)) with `zoo.retrieval.index.build_index`,
and sweeps nprobe. Latency: one query at a time, median of 200; throughput: all 10,000 queries in
one call. Exact search on 200,000 and 500,000 random unit vectors shows how its latency grows.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import faiss
import numpy as np

from embed_speed import load_note
from report import write_report
from zoo.retrieval.embed import embed_collection
from zoo.retrieval.shards import load_collection
from zoo.retrieval.index import DEFAULT_NPROBE, FLAT_MAX_ROWS, NeighborIndex, _unit, build_index

RUNS = Path.home() / "ssl-zoo-runs" / "index-bench"
K = 10


def latency_ms(index, queries: np.ndarray, n: int = 200) -> float:
    """Median milliseconds of a one-query search."""
    times = []
    for q in queries[:n]:
        start = time.perf_counter()
        index.search(q[None], K)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def throughput(index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """(queries/s of one batched search, the ids it returned)."""
    start = time.perf_counter()
    _, ids = index.search(queries, K)
    return len(queries) / (time.perf_counter() - start), ids


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k found."""
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, exact)]))


def main() -> None:
    load = os.getloadavg()[0]
    for split in ("train", "test"):
        embed_collection(f"cifar10:{split}", "random-init-resnet18", RUNS / split)
    queries = _unit(load_collection(RUNS / "test")[0])
    rows = []
    start = time.perf_counter()
    build_index(RUNS / "train", kind="flat")
    build_s = time.perf_counter() - start
    flat = NeighborIndex.load(RUNS / "train").index
    qps, exact = throughput(flat, queries)
    rows.append({"index": "flat (exact)", "rows": flat.ntotal, "nprobe": "-", "recall@10": 1.0,
                 "queries/s (batched)": round(qps), "ms per query": round(latency_ms(flat, queries), 3),
                 "build s": round(build_s, 2)})
    start = time.perf_counter()
    info = build_index(RUNS / "train", kind="ivf")
    build_s = time.perf_counter() - start
    ivf = NeighborIndex.load(RUNS / "train").index
    for nprobe in (1, 2, 4, 8, 16, 32, 64):
        ivf.nprobe = nprobe
        qps, ids = throughput(ivf, queries)
        rows.append({"index": f"IVF-Flat, nlist {info['nlist']}", "rows": ivf.ntotal, "nprobe": nprobe,
                     "recall@10": round(recall(ids, exact), 4), "queries/s (batched)": round(qps),
                     "ms per query": round(latency_ms(ivf, queries), 3), "build s": round(build_s, 2)})
        print(rows[-1], flush=True)
    rng = np.random.default_rng(0)
    for n in (200_000, 500_000):
        synthetic = faiss.IndexFlatIP(queries.shape[1])
        for _ in range(n // 100_000):
            synthetic.add(_unit(rng.standard_normal((100_000, queries.shape[1]), dtype=np.float32)))
        rows.append({"index": "flat (exact), random unit vectors", "rows": n, "nprobe": "-", "recall@10": 1.0,
                     "queries/s (batched)": round(throughput(synthetic, queries[:2000])[0]),
                     "ms per query": round(latency_ms(synthetic, queries), 3), "build s": "-"})
        print(rows[-1], flush=True)
        del synthetic
    print(write_report(
        "index", "Nearest-neighbour search, cosine, 512-d (seed's random-init ResNet-18), 2 CPU cores", rows,
        f"Queries: the 10,000 CIFAR-10 test embeddings; recall@10 against the exact index's top 10. Defaults "
        f"chosen from this table: exact search up to FLAT_MAX_ROWS = {FLAT_MAX_ROWS:,} rows, IVF above with "
        f"nprobe = {DEFAULT_NPROBE}. {load_note(load)} Command: `nice -n 10 python benchmarks/index_recall.py`."))


if __name__ == "__main__":
    main()
