"""One server for several models: start-up time and memory with 1 and with 3 bundled models.

    python benchmarks/multi_model.py [--rounds 3]

Start-up: from `ssl-zoo serve` to the first 200 from /ready (models loaded, verified and warmed in the
worker); the minimum over rounds. Memory: resident set of the server's whole process tree once ready
(main process, LitServe's manager, the HTTP process, the inference worker), and of the inference
worker alone (the process that holds the models).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
from report import write_report
from serving_common import process_tree, process_tree_rss_mb, start_server, stop_server

SETS = {"1 model": ["simclr-cifar10"], "3 models": ["simclr-cifar10", "byol-cifar10", "barlowtwins-cifar10"]}


def worker_rss_mb(pid: int) -> float:
    """Resident memory of the server's inference worker (its process started by multiprocessing's spawn)."""
    for p in process_tree(pid)[1:]:
        try:
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                return process_tree_rss_mb(p)
        except OSError:
            continue
    raise LookupError("no inference worker found")


def measure(models: list[str]) -> dict:
    """Start a server for ``models``; time to ready, memory, and one request per model."""
    start = time.perf_counter()
    proc, url = start_server(models)
    try:
        seconds = time.perf_counter() - start
        rss, worker = process_tree_rss_mb(proc.pid), worker_rss_mb(proc.pid)
        image = next((Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg/test/cat").glob("*.jpg"))
        for name in models:
            r = httpx.post(f"{url}/embed", params={"model": name}, content=image.read_bytes(),
                           headers={"content-type": "image/jpeg"}, timeout=60)
            assert r.status_code == 200 and r.json()["model"] == name, r.text
        return {"seconds": seconds, "rss": rss, "worker": worker}
    finally:
        stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs = {label: [measure(models) for _ in range(args.rounds)] for label, models in SETS.items()}
    rows = [{"server": label, "models": " ".join(SETS[label]),
             "start-up to /ready s (min)": round(min(r["seconds"] for r in rs), 2),
             "start-up s (max)": round(max(r["seconds"] for r in rs), 2),
             "process tree RSS MB": round(min(r["rss"] for r in rs)),
             "inference worker RSS MB": round(min(r["worker"] for r in rs))} for label, rs in runs.items()]
    print(write_report("multi_model", "One server, 1 vs 3 models (width-16 CIFAR ResNet-18s)", rows,
                       f"{args.rounds} rounds each; every model answered one /embed?model= request. RSS counts "
                       "pages shared between processes once per process. Command: `python benchmarks/multi_model.py`."))


if __name__ == "__main__":
    main()
