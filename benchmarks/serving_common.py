"""Shared by the serving benchmarks: a model directory, real JPEGs, a server subprocess, a load loop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch

import zoo

CIFAR_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg" / "test"


def model_dir(width: int, seed: int = 0) -> Path:
    """A random-init CIFAR ResNet-18 of ``width`` saved as a zoo directory (speed does not depend on weights)."""
    torch.manual_seed(seed)
    config = zoo.EncoderConfig("resnet18_cifar", {"width": width})
    return zoo.Encoder(config).save_pretrained(tempfile.mkdtemp(prefix=f"serve-w{width}-"))


def jpegs(n: int) -> list[bytes]:
    """``n`` real CIFAR-10 test JPEGs, spread over the classes."""
    files = sorted(CIFAR_TEST.glob("*/*.jpg"))[:: max(1, 10_000 // n)][:n]
    return [f.read_bytes() for f in files]


def start_server(models: Path | str | list, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``ssl-zoo serve`` of one model or a list on a free loopback port, in its own process group; returns once
    /ready answers 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    names = [str(m) for m in (models if isinstance(models, list) else [models])]
    proc = subprocess.Popen(["ssl-zoo", "serve", *names, "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT to the server's process group (Ctrl-C: no SIGTERM drain), then wait for it."""
    os.killpg(proc.pid, 2)
    proc.wait(timeout=60)


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            total += next(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def run_load(url: str, clients: int, requests: int, make_request) -> dict:
    """``clients`` concurrent loops sending ``requests`` requests in all; ``make_request(i)`` returns
    (httpx kwargs, check(response) -> str | None). Returns throughput, latencies and problems."""
    latencies, problems, statuses = [], [], {}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            for i in counter:
                kwargs, check = make_request(i)
                start = time.perf_counter()
                r = await client.post("/embed", **kwargs)
                latencies.append(time.perf_counter() - start)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                problem = check(r)
                if problem:
                    problems.append(problem)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests/s": requests / seconds, "p50 ms": float(np.percentile(lat, 50)),
            "p99 ms": float(np.percentile(lat, 99)), "statuses": statuses, "problems": problems}


def multipart_upload(image: bytes) -> bytes:
    """Headers and body of ``POST /embed`` with one JPEG in field ``images``, ready to write."""
    boundary = "sslzoo" + os.urandom(8).hex()
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return (f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def run_raw_load(url: str, clients: int, requests: list[bytes], dim: int) -> dict:
    """``clients`` keep-alive connections sending the prepared ``requests`` (from ``multipart_upload``);
    every answer must be 200 with one ``dim``-long embedding. Hand-written HTTP/1.1 rather than httpx or
    aiohttp because the load generator shares the server's 2 cores: measured 0.15 ms of client CPU per
    request vs 1.0 for aiohttp and 3.2 for httpx."""
    host, port = url.rsplit("//", 1)[1].split(":")
    latencies, problems = [], []
    todo = iter(requests)

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for request in todo:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                problems.append(head.split(b"\r\n", 1)[0].decode())
            elif [len(e) for e in orjson.loads(body)["embeddings"]] != [dim]:
                problems.append("wrong embedding shape")
        writer.close()
        await writer.wait_closed()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests/s": len(requests) / seconds, "p50 ms": float(np.percentile(lat, 50)),
            "p99 ms": float(np.percentile(lat, 99)), "problems": problems}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``GET /metrics`` (the server runs with --metrics-public) as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    """How much the samples ``name`` with ``labels`` (summed over other labels) grew between two scrapes."""
    def total(samples: dict) -> float:
        return sum(v for (n, found), v in samples.items() if n == name and labels.items() <= dict(found).items())
    return total(after) - total(before)
