"""Embedding-server throughput and latency: batch size 1 vs dynamic batching, 1/4/16 clients; server
overhead vs calling the model directly; the batching goals; then wrk (a load tool nobody here wrote)
on /embed and on /search, with /metrics scraped during each run.

    python benchmarks/serving_speed.py [--rounds 5] [--dynamic-args "--batch-gap 0.008"] [--wrk-seconds 20]

Model: full-width CIFAR ResNet-18 (512-d). Each request uploads one real CIFAR-10 JPEG (multipart)
from a bounded list. This machine's speed drifts from minute to minute, so each round measures the
direct call and both servers back to back, ratios are taken within a round, the tables give the
median over rounds, and CPU time per request (steadier than wall time) is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import shlex
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from report import write_report
from serving_common import (
    CIFAR_TEST,
    delta,
    jpegs,
    model_dir,
    multipart_upload,
    process_tree_cpu_s,
    run_raw_load,
    scrape,
    start_server,
    stop_server,
)

import zoo
from serving.decode import decode_image

REQUESTS = {1: 150, 4: 300, 16: 600}
SINGLE, DYNAMIC = "batch size 1", "dynamic batching"


def server_round(path, images, label: str, args: list[str]) -> dict[int, dict]:
    """Start a server with ``args``, warm it up, and load it at 1, 4 and 16 clients."""
    uploads = [multipart_upload(b) for b in images]
    proc, url = start_server(path, *args)
    try:
        asyncio.run(run_raw_load(url, 4, uploads[:32], 512))  # warm-up
        out = {}
        for clients, n in REQUESTS.items():
            server_cpu, client_cpu = process_tree_cpu_s(proc.pid), time.process_time()
            out[clients] = asyncio.run(run_raw_load(url, clients, [uploads[i % len(uploads)] for i in range(n)], 512))
            out[clients]["server CPU ms/request"] = 1000 * (process_tree_cpu_s(proc.pid) - server_cpu) / n
            out[clients]["client CPU ms/request"] = 1000 * (time.process_time() - client_cpu) / n
            assert not out[clients]["problems"], (label, clients, out[clients]["problems"][:3])
        return out
    finally:
        stop_server(proc)


def direct_call(path, images, batch: int) -> tuple[float, float]:
    """decode + preprocess + model in-process, in batches of ``batch`` (what the server wraps):
    images/s and ms of CPU per image."""
    enc = zoo.load(str(path))
    n = len(images)

    def run():
        for i in range(0, n, batch):
            arrays = np.stack([decode_image(b, 32) for b in images[i:i + batch]])
            with torch.inference_mode():
                enc(enc.preprocess(arrays))

    run()
    start, cpu = time.perf_counter(), time.process_time()
    run()
    return n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n


def summary_rows(rows: list[dict], wrk: list[dict]) -> list[dict]:
    """The dynamic-batching server at 1 and 16 concurrent clients, by the Python client and by wrk."""
    python = {r["clients"]: r for r in rows if r["server"] == DYNAMIC}
    tool = {r["connections"]: r for r in wrk if r["route"] == "/embed"}
    return [{"concurrent": n, "Python client requests/s": python[n]["requests/s"], "p50 ms": python[n]["p50 ms"],
             "p99 ms": python[n]["p99 ms"], "wrk requests/s": tool[n]["requests/s"], "wrk p50": tool[n]["p50"],
             "wrk p99": tool[n]["p99"]} for n in (1, 16)]


def spread(values: list[float]) -> float:
    """(max - min) / median, in %: how far the rounds disagree."""
    return 100 * (max(values) - min(values)) / statistics.median(values)


def goal_rows(rounds: list[dict]) -> list[dict]:
    """Issue 26's batching goals as ratios, each the median over rounds with the rounds' spread."""
    measures = {
        "1 client: dynamic batching / batch size 1, requests/s": (
            [r[DYNAMIC][1]["requests/s"] / r[SINGLE][1]["requests/s"] for r in rounds], 0.90),
        "16 clients: share of the model's own batching gain, requests/s": (
            [(r[DYNAMIC][16]["requests/s"] / r[SINGLE][16]["requests/s"]) / (r["direct"][16][0] / r["direct"][1][0])
             for r in rounds], 0.90),
        "16 clients: share of the model's own batching gain, CPU per request": (
            [(r[SINGLE][16]["server CPU ms/request"] / r[DYNAMIC][16]["server CPU ms/request"])
             / (r["direct"][1][1] / r["direct"][16][1]) for r in rounds], 0.90),
        "16 clients: server / direct call, requests/s (overhead <= 15 %)": (
            [r[DYNAMIC][16]["requests/s"] / r["direct"][16][0] for r in rounds], 0.85),
        "16 clients: direct call / server, CPU per request (overhead <= 15 %)": (
            [r["direct"][16][1] / r[DYNAMIC][16]["server CPU ms/request"] for r in rounds], 0.85),
    }
    return [{"measure": name, "goal": f">= {bound:.2f}", "median": f"{statistics.median(values):.2f}",
             "rounds": " ".join(f"{v:.2f}" for v in values), "rounds agree within": f"{spread(values):.0f} %",
             "met": "yes" if statistics.median(values) >= bound else "no"} for name, (values, bound) in measures.items()]


WRK_NOTES = ("wrk 4.x (`apt-get install wrk`), one thread, keep-alive connections, for the time shown; its Lua script "
             "posts the JPEGs in turn as raw `image/jpeg` bodies. Rows with /search: a server with `--index` over "
             "the 10,000 CIFAR-10 test images embedded by simclr-cifar10; queries are 256 training images, as "
             "they are or drifted (colours inverted and turned 90 degrees). The metrics columns come from "
             "`GET /metrics` scraped halfway through and after each run (differences over the run): requests "
             "answered 200, mean batch size, mean embedding norm, mean top-1 similarity to the collection. "
             "Command: `python benchmarks/serving_speed.py`.")


def wrk_rows(model: Path, seconds: int) -> list[dict]:
    """wrk at 1 and 16 connections on /embed; then /search with plain and drifted queries, with /metrics."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssl-zoo-wrk-") as tmp:
        plain = _write_jpegs(Path(tmp) / "plain", jpegs(256))
        proc, url = start_server(model, "--metrics-public")
        try:
            for connections in (1, 16):
                rows.append({"route": "/embed", "queries": "CIFAR-10 test", **_wrk(url, "/embed", plain,
                                                                                    connections, seconds)})
        finally:
            stop_server(proc)
        collection = Path(tmp) / "collection"
        subprocess.run(["ssl-zoo", "embed", "cifar10:test", "--model", "simclr-cifar10", "--out", str(collection)],
                       check=True, capture_output=True)
        subprocess.run(["ssl-zoo", "index", str(collection)], check=True, capture_output=True)
        train = sorted((CIFAR_TEST.parent / "train").glob("*/*.jpg"))[::196][:256]
        drifted = _write_jpegs(Path(tmp) / "drifted", [_drift(f.read_bytes()) for f in train])
        queries = _write_jpegs(Path(tmp) / "train", [f.read_bytes() for f in train])
        proc, url = start_server("simclr-cifar10", "--metrics-public", "--index", str(collection))
        try:
            for name, files in (("CIFAR-10 train", queries), ("drifted", drifted)):
                rows.append({"route": "/search", "queries": name, **_wrk(url, "/search", files, 16, seconds)})
        finally:
            stop_server(proc)
    return rows


def _write_jpegs(folder: Path, images: list[bytes]) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / f"{i:04d}.jpg" for i in range(len(images))]
    for path, data in zip(paths, images):
        path.write_bytes(data)
    return paths


def _drift(jpeg: bytes) -> bytes:
    """The image with its colours inverted and turned 90 degrees: a shift a dashboard should show."""
    from PIL import Image, ImageOps

    out = io.BytesIO()
    ImageOps.invert(Image.open(io.BytesIO(jpeg)).convert("RGB")).rotate(90).save(out, "JPEG", quality=90)
    return out.getvalue()


def _wrk(url: str, route: str, files: list[Path], connections: int, seconds: int) -> dict:
    """One wrk run posting ``files`` in turn; its throughput and percentiles, and what /metrics saw meanwhile."""
    script = Path(files[0]).parent / "post.lua"
    script.write_text(WRK_LUA.replace("FILES", ", ".join(f'"{f}"' for f in files)).replace("ROUTE", route))
    before = scrape(url)
    halfway: dict = {}
    timer = threading.Timer(seconds / 2, lambda: halfway.update(scrape(url)))
    timer.start()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"{url}{route}"], capture_output=True, text=True, check=True).stdout
    timer.join()
    after = scrape(url)
    latency = dict(re.findall(r"^\s+(50|90|99)%\s+([\d.]+\w+)\s*$", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    answered = delta(after, before, "ssl_zoo_requests_total", route=route, status="200")
    return {"connections": connections, "seconds": seconds,
            "requests/s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": latency["50"], "p90": latency["90"], "p99": latency["99"],
            "non-2xx": int(errors.group(1)) if errors else 0,
            "200s halfway (metrics)": int(delta(halfway, before, "ssl_zoo_requests_total", route=route, status="200")),
            "200s (metrics)": int(answered),
            "mean batch": _mean(after, before, "ssl_zoo_batch_size"),
            "mean norm": _mean(after, before, "ssl_zoo_embedding_norm"),
            "mean top-1 similarity": _mean(after, before, "ssl_zoo_search_top1_similarity")}


WRK_LUA = """local files, bodies, i = {FILES}, {}, 0
for k, path in ipairs(files) do local f = io.open(path, "rb"); bodies[k] = f:read("*a"); f:close() end
wrk.method, wrk.headers["Content-Type"] = "POST", "image/jpeg"
request = function() i = i % #bodies + 1; return wrk.format(nil, "ROUTE", nil, bodies[i]) end
"""


def _mean(after: dict, before: dict, histogram: str) -> str:
    count = delta(after, before, f"{histogram}_count")
    return f"{delta(after, before, f'{histogram}_sum') / count:.3f}" if count else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dynamic-args", default="", help="extra `ssl-zoo serve` flags for the batching server")
    parser.add_argument("--wrk-seconds", type=int, default=20, help="length of each wrk run (0: no wrk run)")
    cli = parser.parse_args()
    path, images = model_dir(64), jpegs(256)
    configs = {SINGLE: ["--max-batch-size", "1"], DYNAMIC: shlex.split(cli.dynamic_args)}
    rounds = []
    for _ in range(cli.rounds):
        direct = {batch: direct_call(path, images, batch) for batch in (1, 16)}
        rounds.append({"direct": direct, **{label: server_round(path, images, label, args)
                                             for label, args in configs.items()}})
    rows = [{"server": label, "clients": clients, "requests": n,
             **{k: round(statistics.median(r[label][clients][k] for r in rounds), 1)
                for k in ("requests/s", "p50 ms", "p99 ms", "server CPU ms/request", "client CPU ms/request")}}
            for label in configs for clients, n in REQUESTS.items()]
    rows += [{"server": f"direct call, batches of {batch}", "clients": "-", "requests": len(images),
              "requests/s": round(statistics.median(r["direct"][batch][0] for r in rounds), 1), "p50 ms": "-",
              "p99 ms": "-", "server CPU ms/request": round(statistics.median(r["direct"][batch][1] for r in rounds), 1),
              "client CPU ms/request": "-"} for batch in (1, 16)]
    flags = " ".join(configs[DYNAMIC]) or "the defaults"
    print(write_report("serving", "Embedding server on 2 CPU cores, full-width CIFAR ResNet-18, one JPEG per request",
                       rows, f"Median of {cli.rounds} rounds; in each round the direct call (decode + preprocess + "
                       "model in-process) and both servers are measured back to back. Dynamic batching server: "
                       f"`ssl-zoo serve` with {flags} (max batch 16; a batch starts at once when nothing else waits, "
                       "else when full, after a quiet gap of 8 ms or at the 50 ms timeout). CPU per request: the "
                       "server's whole process tree, the steadier measure when the machine's speed drifts. Load "
                       "generator: keep-alive HTTP/1.1 on loopback, on the same 2 cores. "
                       "Command: `python benchmarks/serving_speed.py`."))
    print(write_report("serving_goals", "Batching goals (issue 26), each the median over rounds", goal_rows(rounds),
                       "Shares of the model's own gain divide the server's gain from dynamic batching (over batch "
                       "size 1) by the gain of the model called directly in batches of 16 over batches of 1. "
                       "Overheads compare the batching server at 16 clients with the direct call in batches of 16. "
                       "Rounds agree within: (max - min) / median of the per-round ratios."))
    if cli.wrk_seconds:
        wrk = wrk_rows(path, cli.wrk_seconds)
        print(write_report("serving_wrk", "wrk against the dynamic-batching server, full-width CIFAR ResNet-18",
                           wrk, WRK_NOTES))
        print(write_report("serving_summary", "POST /embed, one JPEG per request, full-width CIFAR ResNet-18, 2 cores",
                           summary_rows(rows, wrk), "The Python client: this benchmark's own keep-alive loader "
                           f"(median of {cli.rounds} rounds); wrk: one run. Both on the server's 2 cores. Details: "
                           "docs/benchmarks.md. Command: `python benchmarks/serving_speed.py`."))


if __name__ == "__main__":
    main()
