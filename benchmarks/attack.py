"""Replay the attacks of issues #12 and #25 against a local server, all at once, while valid requests run.

    nice -n 10 python benchmarks/attack.py

127.0.0.1 only; bounded in count (a fixed list, at most 100 connections per attack) and time (each
attack ends by the server's deadlines or after 90 s). The server runs with its defaults and an API
key. Phase 1 runs every network attack concurrently with two clients sending valid requests (1-4
JPEGs, embeddings compared with zoo.embed); phase 2 pauses, then kills, the inference worker.
Reported per attack: status codes, seconds until the last answer or close, peak RSS of each server
process while it ran; then whether every valid request succeeded with the right embeddings, whether
any 5xx other than 504 came back, and each process's RSS after the attacks against its warm level.
Then decoding bombs (issue #25): the latency of one valid client alone, and again while 8 clients send
bombs without pause (goal: at most 2x); and ``ssl-zoo embed``, the index and a restarted worker under
files nobody vetted. The hostile files come from ``tests/hostile.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import re
import secrets
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import statistics
import subprocess
import sys
import tempfile

import httpx
import numpy as np
from PIL import Image

import zoo
from report import RESULTS, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import hostile  # noqa: E402  (the tests' hostile files, made in memory)
from serving_common import jpegs, model_dir, process_tree, start_server, stop_server
from zoo.io import write_json

HOST = "127.0.0.1"  # the server's address, and the attacker's own when it floods connections


def source(attack: int) -> tuple[str, int]:
    """The loopback address attack number ``attack`` comes from (127.0.1.N): each attack is its own client, so one
    attack's connections do not use up another's share under the per-address cap."""
    return (f"127.0.1.{attack}", 0)
KEY = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {KEY}"}
MB = 1024 * 1024


class RssSampler:
    """Resident memory of every process of the server, by role, sampled every 50 ms in a thread."""

    def __init__(self, root: int) -> None:
        self.root, self.samples, self._stop = root, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def roles(self) -> dict[str, int]:
        """main, manager, http, worker (and resource tracker) -> pid. The manager and the HTTP process are
        both forked from main with its command line; LitServe starts the manager first."""
        found, forked = {"main": self.root}, []
        for pid in process_tree(self.root)[1:]:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found["worker"] = pid
            elif b"resource_tracker" in cmdline:
                found["resource tracker"] = pid
            else:
                forked.append(pid)
        for role, pid in zip(("manager", "http"), sorted(forked)):
            found[role] = pid
        return found

    def now(self) -> dict[str, float]:
        """RSS in MB of each role now."""
        out = {}
        for role, pid in self.roles().items():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            rss = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")]
            if rss:  # a process that has just exited has none
                out[role] = rss[0] / 1024
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((time.monotonic(), self.now()))

    def peak(self, start: float, end: float) -> dict[str, float]:
        """The largest RSS of each role between two monotonic times."""
        peaks: dict[str, float] = {}
        for t, rss in self.samples:
            if start <= t <= end:
                for role, mb in rss.items():
                    peaks[role] = max(peaks.get(role, 0.0), mb)
        return peaks

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


async def _status(reader: asyncio.StreamReader) -> str:
    """The status code of the server's answer, or how the connection ended without one."""
    try:
        line = await reader.readline()
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    return line.split()[1].decode() if line else "closed"


async def _raw(port: int, head: bytes, trickle: bytes = b"", every: float = 1.0, body_mb: int = 0,
               limit_s: float = 90, attack: int = 1) -> str:
    """One connection: send ``head``, then ``body_mb`` MB at full speed, then ``trickle`` a byte per ``every`` s;
    return the answer's status (or "closed"/"reset"/"no answer")."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=source(attack))
    answer = asyncio.create_task(_status(reader))
    try:
        writer.write(head)
        for _ in range(body_mb):
            if answer.done():
                break
            writer.write(b"\0" * MB)
            await writer.drain()
        for byte in trickle:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([answer], timeout=every)
        return await asyncio.wait_for(answer, limit_s)
    except (ConnectionResetError, BrokenPipeError):
        return await asyncio.wait_for(answer, 5) if not answer.cancelled() else "reset"
    except TimeoutError:
        return "no answer"
    finally:
        answer.cancel()
        writer.close()


async def endless_header(port: int) -> list[str]:
    """A header that never ends: up to 96 MB, 256 KB at a time, until the server answers or closes."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=source(2))
    answer = asyncio.create_task(_status(reader))
    sent = 0
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        while sent < 96 * MB and not answer.done():
            writer.write(b"a" * (256 * 1024))
            sent += 256 * 1024
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass
    status = await asyncio.wait_for(answer, 30)
    writer.close()
    return [f"{status} after {sent / MB:.2f} MB sent"]


async def idle_connections(port: int, n: int = 100) -> list[str]:
    """``n`` connections that send nothing: each must be closed by the server."""
    async def one() -> str:
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=source(3))
        try:
            data = await asyncio.wait_for(reader.read(), 90)
            return "closed" if data == b"" else data.split()[1].decode() if data.startswith(b"HTTP/1.1") else "answered"
        except TimeoutError:
            return "still open after 90 s"
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(n))))


BOMBS = {  # decoding bombs that pass every pixel limit (issue #25): name -> (file, expected status)
    "progressive JPEG declaring 11,585 x 11,585 (3 KB)": (
        hostile.declared_size(hostile.jpeg((256, 256), progressive=True), 11585, 11585), "413"),
    "JPEG of 2,000 scans declaring 4,096 x 4,096 (340 KB; 4.4 s of CPU to decode unchecked)": (
        hostile.declared_size(hostile.repeated_scans(hostile.jpeg((128, 128), progressive=True), 2000), 4096, 4096),
        "400"),
    "PNG with 5,000 colour profiles (iCCP)": (hostile.icc_profiles(5000), "400"),
    "PNG of 1 x 80,000,000 (230 KB)": (hostile.long_thin_png(80_000_000), "400"),
}


def _post(path: str, ctype: str, length: int, key: bool = True) -> bytes:
    auth = f"Authorization: Bearer {KEY}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n"
            ).encode()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


async def http_attacks(url: str, jpeg: bytes) -> dict[str, tuple[list[str], str]]:
    """The attacks that are plain requests to /embed: name -> (statuses, the statuses expected)."""
    json_type, png_type, jpeg_type = ({"content-type": t} for t in ("application/json", "image/png", "image/jpeg"))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    cases = {  # name: (request, expected statuses, how many times, with the API key)
        "JSON nested 100,000 deep": (dict(content=b"[" * 100_000 + b"]" * 100_000, headers=json_type), "400", 1, True),
        "JSON nested 5,000 deep in a field": (dict(content=b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                                   headers=json_type), "400", 1, True),
        "31 MB JSON of tiny values": (dict(content=b'{"images": [' + b"0," * (31 * MB // 2) + b"0]}",
                                           headers=json_type), "400 (or 429 while the budget is full)", 1, True),
        "long thin PNG, 16,777,216 x 1 (16 KB)": (dict(content=_png(Image.new("L", (16_777_216, 1))),
                                                      headers=png_type), "400", 1, True),
        "PNG declaring 20,000 x 20,000": (dict(content=_png(Image.new("L", (20_000, 20_000))), headers=png_type),
                                          "413", 1, True),
        "EPS file (a Ghostscript format)": (dict(content=eps, headers=jpeg_type), "400", 1, True),
        "65 images in one request": (dict(files=[("images", ("a.jpg", jpeg, "image/jpeg"))] * 65), "413", 1, True),
        "50 truncated JPEGs": (dict(content=jpeg[: len(jpeg) // 3], headers=jpeg_type), "400", 50, True),
        **{name: (dict(content=data, headers=jpeg_type), expected, 1, True) for name, (data, expected) in BOMBS.items()},
        "normalize given twice in a form": (dict(files=[("images", ("a.jpg", jpeg, "image/jpeg")),
                                                        ("normalize", (None, "true")), ("normalize", (None, "false"))]),
                                            "400", 1, True),
        "no API key": (dict(content=jpeg, headers=jpeg_type), "401", 1, False),
        "wrong API key": (dict(content=jpeg, headers={**jpeg_type, "x-api-key": "guess"}), "401", 1, False),
    }
    transport = httpx.AsyncHTTPTransport(local_address=source(4)[0])
    async with httpx.AsyncClient(base_url=url, timeout=90, transport=transport) as client:
        async def run(request: dict, times: int, key: bool) -> list[str]:
            headers = {**request.pop("headers", {}), **(AUTH if key else {})}
            statuses = []
            for _ in range(times):
                try:
                    statuses.append(str((await client.post("/embed", headers=headers, **request)).status_code))
                except httpx.TransportError:  # refused: this address already holds its share of connections
                    statuses.append("refused")
            return statuses

        results = await asyncio.gather(*(run(dict(request), times, key) for request, _, times, key in cases.values()))
    return {name: (statuses, case[1]) for (name, case), statuses in zip(cases.items(), results)}


async def valid_traffic(url: str, images: list[bytes], expected: np.ndarray, stop: asyncio.Event,
                        clients: int = 2) -> Counter:
    """Valid requests (1-4 JPEGs, normalised or not) until ``stop``; counts by outcome."""
    outcomes: Counter = Counter()
    rnd = random.Random(0)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=90, transport=_valid_transport()) as client:
        async def loop() -> None:
            while not stop.is_set():
                picks = [rnd.randrange(len(images)) for _ in range(rnd.randint(1, 4))]
                normalize = rnd.random() < 0.5
                r = await client.post("/embed", params={"normalize": str(normalize).lower()},
                                      files=[("images", (f"{k}.jpg", images[k], "image/jpeg")) for k in picks])
                if r.status_code != 200:
                    outcomes[f"status {r.status_code}"] += 1
                    continue
                want = expected[picks]
                want = want / np.linalg.norm(want, axis=1, keepdims=True) if normalize else want
                got = np.array(r.json()["embeddings"])
                outcomes["ok" if got.shape == want.shape and np.abs(got - want).max() < 1e-4 else "wrong"] += 1

        await asyncio.gather(*(loop() for _ in range(clients)))
    return outcomes


def _valid_transport() -> httpx.AsyncHTTPTransport:
    """Valid clients' connections, from 127.0.0.2: the per-address connection cap protects them from the attacker."""
    return httpx.AsyncHTTPTransport(local_address="127.0.0.2")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def phase_one(url: str, images: list[bytes], expected: np.ndarray, sampler: RssSampler) -> tuple[list, Counter]:
    """Every network attack at once, with valid traffic alongside; one row per attack."""
    port, rows = _port(url), []

    async def timed(name: str, expected_status: str, attack) -> None:
        start = time.monotonic()
        statuses = await attack
        end = time.monotonic()
        rows.append((name, expected_status, statuses, end - start, (start, end)))

    async def http_rows() -> None:
        start = time.monotonic()
        results = await http_attacks(url, images[0])
        end = time.monotonic()
        for name, (statuses, expected_status) in results.items():
            rows.append((name, expected_status, statuses, end - start, (start, end)))

    stop = asyncio.Event()
    traffic = asyncio.create_task(valid_traffic(url, images, expected, stop))
    slow_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
    await asyncio.gather(
        timed("header without end (up to 96 MB)", "431", endless_header(port)),
        timed("100 idle connections", "closed (header timeout), or 503 beyond 32 from one address",
              idle_connections(port)),
        timed("8 slow headers (a byte a second)", "408",
              asyncio.gather(*(_raw(port, slow_header, trickle=b"a" * 60, attack=5) for _ in range(8)))),
        timed("12 bodies of 31 MB, then stalled", "408 (held) or 429 (over the budget)",
              asyncio.gather(*(_raw(port, _post("/embed", "image/jpeg", 32 * MB - 1), body_mb=31, trickle=b"\0", attack=6,
                                    every=60) for _ in range(12)))),
        timed("slow body without a key", "401",
              asyncio.gather(_raw(port, _post("/embed", "image/jpeg", 10_000, key=False), trickle=b"\0" * 60,
                                  attack=7))),
        http_rows())
    stop.set()
    outcomes = await traffic
    return [_row(sampler, *r) for r in rows], outcomes


def _bomb_process(url: str, seconds: float, headers: dict, out) -> None:
    """8 clients sending decoding bombs without pause for ``seconds`` (in a process of its own, so its event loop
    does not delay the valid client's); puts their status counts on ``out``."""
    async def run() -> Counter:
        statuses, bombs, end = Counter(), [data for data, _ in BOMBS.values()], time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=90) as attacker:  # from 127.0.0.1
            async def bomber(i: int) -> None:
                while time.monotonic() < end:
                    r = await attacker.post("/embed", content=bombs[i % len(bombs)], headers={"content-type": "image/jpeg"})
                    statuses[str(r.status_code)] += 1

            await asyncio.gather(*(bomber(i) for i in range(8)))
        return statuses

    out.put(dict(asyncio.run(run())))


async def bombs_in_flight(url: str, jpeg: bytes, sampler: RssSampler, requests: int = 40) -> dict:
    """One valid client's latency alone, then while 8 clients (another process) send decoding bombs without pause."""
    import multiprocessing

    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=90, transport=_valid_transport()) as client:
        async def valid() -> list[float]:
            times = []
            for _ in range(requests):
                start = time.monotonic()
                r = await client.post("/embed", content=jpeg, headers={"content-type": "image/jpeg"})
                assert r.status_code == 200, r.text
                times.append(time.monotonic() - start)
            return times

        alone = await valid()
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        bombers = context.Process(target=_bomb_process, args=(url, 15.0, AUTH, out))  # the key: this process's
        bombers.start()
        await asyncio.sleep(3)  # the bombers' process started and firing
        start = time.monotonic()
        during = await valid()
        end = time.monotonic()
        statuses = Counter(await asyncio.to_thread(out.get))
        bombers.join()
    ratio = statistics.median(during) / statistics.median(alone)
    row = _row(sampler, "8 clients sending decoding bombs without pause, one valid client alongside",
               "4xx; valid latency at most 2x", list(statuses), end - start, (start, end))
    row["answers"] = (f"{', '.join(f'{k} x{v}' for k, v in sorted(statuses.items()))}; valid median "
                      f"{1000 * statistics.median(alone):.0f} ms alone, {1000 * statistics.median(during):.0f} ms "
                      f"during ({ratio:.2f}x)")
    return {"row": row, "ratio": ratio, "alone_ms": 1000 * statistics.median(alone),
            "during_ms": 1000 * statistics.median(during)}


async def half_open(url: str, jpeg: bytes, sampler: RssSampler, n: int = 260) -> dict:
    """``n`` connections from 127.0.0.1 that send nothing, while a client from 127.0.0.2 sends valid requests."""
    port, start = _port(url), time.monotonic()
    held, refused = [], 0
    for _ in range(n):
        held.append(await asyncio.open_connection(HOST, port))
    await asyncio.sleep(0.5)
    for reader, _ in held:
        try:
            refused += (await asyncio.wait_for(reader.readline(), 0.05)).startswith(b"HTTP/1.1 503")
        except TimeoutError:
            pass
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, transport=_valid_transport()) as client:
        valid = [str((await client.post("/embed", content=jpeg, headers={"content-type": "image/jpeg"})).status_code)
                 for _ in range(5)]
    for _, writer in held:
        writer.close()
    end = time.monotonic()
    row = _row(sampler, f"{n} silent connections from one address, valid requests from another",
               "503 beyond 32 per address; the other address served", valid, end - start, (start, end))
    row["answers"] = f"{refused} of {n} refused with 503 at once; valid from 127.0.0.2: " + row["answers"]
    return row


def hostile_folder_rows() -> list[dict]:
    """``ssl-zoo embed`` on a folder nobody vetted, and an index with a damaged file (no server)."""
    from zoo.retrieval.index import NeighborIndex, build_index

    root = Path(tempfile.mkdtemp(prefix="attack-embed-"))
    folder = root / "untrusted"
    (folder / "sub").mkdir(parents=True)
    for i, jpeg in enumerate(jpegs(3)):
        (folder / "sub" / f"{i}.jpg").write_bytes(jpeg)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "sub" / "loop").symlink_to("..")
    (folder / "sub" / "loop2").symlink_to("../sub")
    (folder / "eps.jpg").write_bytes(hostile.EPS)
    for i, (name, (data, _)) in enumerate(BOMBS.items()):
        (folder / f"bomb-{i}.{'png' if 'PNG' in name else 'jpg'}").write_bytes(data)
    fd = os.open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, jpegs(1)[0])
    os.close(fd)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "zoo", "embed", str(folder), "--model", str(model_dir(8)), "--out",
                           str(root / "out"), "--workers", "2"], capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        failures = (root / "out" / "failures.jsonl").read_text().splitlines()
        manifest = json.loads((root / "out" / "manifest.json").read_text())
        answer = f"finished: {manifest['rows']} rows, {len(failures)} files refused with their reasons"
    else:
        answer = f"exit {proc.returncode}: {proc.stderr[-200:]}"
    no_server = {f"peak RSS MB {role}": "-" for role in ("http", "worker", "main", "manager")}
    rows = [{"attack": "ssl-zoo embed on a folder with a FIFO, 2 link loops, an EPS, 4 bombs and a Latin-1 name",
             "expected": "finishes: 3 rows, each refused file listed", "answers": answer, "seconds": round(seconds, 1),
             **no_server}]
    build_index(root / "out")
    data = bytearray((root / "out" / "index.faiss").read_bytes())
    data[-1] ^= 0xFF
    (root / "out" / "index.faiss").write_bytes(bytes(data))
    try:
        NeighborIndex.load(root / "out")
        answer = "loaded"
    except ValueError as e:
        answer = f"refused: {str(e)[:70]}"
    rows.append({"attack": "index.faiss with a flipped byte", "expected": "refused (checksum in index.json)",
                 "answers": answer, "seconds": 0, **no_server})
    shutil.rmtree(root, ignore_errors=True)
    return rows


def _worker_pid(sampler: RssSampler) -> int:
    return sampler.roles()["worker"]


async def phase_two(url: str, images: list[bytes], expected: np.ndarray, sampler: RssSampler,
                    model_path: Path) -> list[dict]:
    """The inference worker paused past the request deadline, then killed."""
    rows = []
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120, transport=_valid_transport()) as client:
        async def embed() -> str:
            r = await client.post("/embed", content=images[0], headers={"content-type": "image/jpeg"})
            return str(r.status_code)

        worker, start = _worker_pid(sampler), time.monotonic()
        os.kill(worker, signal.SIGSTOP)
        try:
            statuses = list(await asyncio.gather(*(embed() for _ in range(3))))
        finally:
            os.kill(worker, signal.SIGCONT)
        statuses.append(f"then {await embed()}")
        end = time.monotonic()
        rows.append(_row(sampler, "inference worker paused (SIGSTOP)", "504, then 200", statuses, end - start,
                         (start, end)))

        start = time.monotonic()
        os.kill(_worker_pid(sampler), signal.SIGKILL)
        during = asyncio.gather(*(embed() for _ in range(3)))
        health, recovered = [], None
        while time.monotonic() - start < 90 and recovered is None:
            status = str((await client.get("/health")).status_code)
            if health[-1:] != [status]:
                health.append(status)
            if status == "200" and "503" in health:
                recovered = time.monotonic() - start
            await asyncio.sleep(0.1)
        back = f"back after {recovered:.1f} s" if recovered is not None else "not back within 90 s"
        statuses = list(await during) + [f"health {'->'.join(health)}, {back}", f"then {await embed()}"]
        end = time.monotonic()
        rows.append(_row(sampler, "inference worker killed (SIGKILL)",
                         "200 (queued until the restart), 504 (taken by the killed worker)",
                         statuses, end - start, (start, end)))

        weights = model_path / "model.safetensors"
        good, start = weights.read_bytes(), time.monotonic()
        other = model_dir(16, seed=1)  # other weights of the same shape
        weights.write_bytes((other / "model.safetensors").read_bytes())
        os.kill(_worker_pid(sampler), signal.SIGKILL)
        answers, health = [], []
        while time.monotonic() - start < 30:
            answers.append(await embed())
            health.append(str((await client.get("/health")).status_code))
        weights.write_bytes(good)
        while time.monotonic() - start < 150 and str((await client.get("/health")).status_code) != "200":
            await asyncio.sleep(0.5)
        statuses = [f"{s} x{n}" for s, n in sorted(Counter(answers).items())] + [
            f"health {'/'.join(sorted(set(health)))}", f"restored: then {await embed()}"]
        end = time.monotonic()
        rows.append(_row(sampler, "weights replaced, worker killed: the restart must not serve them",
                         "no 200 while replaced (503/504: not ready), 200 once restored", statuses, end - start,
                         (start, end)))
    return rows


def _row(sampler: RssSampler, name: str, expected: str, statuses: list[str], seconds: float,
         window: tuple[float, float]) -> dict:
    peak = sampler.peak(*window)
    counts = Counter(statuses)
    return {"attack": name, "expected": expected, "_statuses": statuses,
            "answers": ", ".join(f"{s}" + (f" x{n}" if n > 1 else "") for s, n in sorted(counts.items())),
            "seconds": round(seconds, 1),
            **{f"peak RSS MB {role}": round(peak.get(role, 0.0)) for role in ("http", "worker", "main", "manager")}}


async def _warm_up(url: str, images: list[bytes], expected: np.ndarray, seconds: float) -> Counter:
    stop = asyncio.Event()
    task = asyncio.create_task(valid_traffic(url, images, expected, stop, clients=4))
    await asyncio.sleep(seconds)
    stop.set()
    return await task


def main() -> None:
    """Start the server, warm it up, run both phases, write results/attack.json and .md."""
    path, images = model_dir(16), jpegs(32)
    expected = zoo.embed(zoo.load(str(path)), [Image.open(io.BytesIO(b)) for b in images]).numpy()
    proc, url = start_server(path, env={"SSL_ZOO_API_KEY": KEY})
    sampler = RssSampler(proc.pid)
    try:
        warm_traffic = asyncio.run(_warm_up(url, images, expected, 15))
        warm = sampler.now()
        rows, outcomes = asyncio.run(phase_one(url, images, expected, sampler))
        bombs = asyncio.run(bombs_in_flight(url, images[0], sampler))
        rows += [bombs["row"], asyncio.run(half_open(url, images[0], sampler))]
        time.sleep(3)
        settle = asyncio.run(_warm_up(url, images, expected, 5))
        after = sampler.now()
        rows += asyncio.run(phase_two(url, images, expected, sampler, path))
    finally:
        sampler.stop()
        stop_server(proc)
    codes = [c for r in rows for s in r.pop("_statuses", [])  # /health's 503 and the per-address cap's: by design
             if not s.startswith("health") and "beyond 32" not in r["expected"]
             for c in re.findall(r"\b\d{3}\b", s)] + [o.split()[-1] for o in outcomes if o.startswith("status")]
    fivexx = sorted({c for c in codes if c.startswith("5") and c != "504"})
    rss = {role: {"warm MB": round(warm[role], 1), "after MB": round(after.get(role, 0.0), 1),
                  "change %": round(100 * (after.get(role, 0.0) / warm[role] - 1), 1)}
           for role in ("main", "manager", "http", "worker") if role in warm}
    rows += hostile_folder_rows()
    summary = {"valid requests during the attacks": dict(outcomes), "valid requests before": dict(warm_traffic),
               "valid latency with 8 bombs in flight": {k: round(v, 2) for k, v in bombs.items() if k != "row"},
               "valid requests after": dict(settle), "5xx other than 504": fivexx, "RSS after vs warm": rss,
               "server": "ssl-zoo serve defaults (header 10 s, body 20 s, request 30 s, 256 MB of bodies, "
                         "64 KB of headers, 256 connections), width-16 CIFAR ResNet-18, API key"}
    ok_valid = set(outcomes) == {"ok"} and set(settle) == {"ok"}
    notes = (f"Phase 1 (all at once, with 2 clients sending valid requests): valid requests {dict(outcomes)}; "
             f"5xx other than 504: {fivexx or 'none'}. RSS after the attacks vs warm (MB): "
             + ", ".join(f"{role} {v['warm MB']} -> {v['after MB']} ({v['change %']:+} %)" for role, v in rss.items())
             + f". Every valid request succeeded with the right embeddings: {'yes' if ok_valid else 'NO'}. "
             f"With 8 clients sending decoding bombs without pause, one valid client's median latency went from "
             f"{bombs['alone_ms']:.0f} to {bombs['during_ms']:.0f} ms ({bombs['ratio']:.2f}x; goal: at most 2x). "
             "Phase 2: the inference worker paused past the 30 s deadline, then killed, then killed again with "
             "its weights replaced on disk. Server: `ssl-zoo serve` "
             "defaults with an API key; width-16 CIFAR ResNet-18. Command: `nice -n 10 python benchmarks/attack.py`.")
    print(write_report("attack", "Attacks on the embedding server (127.0.0.1), with valid traffic alongside",
                       rows, notes))
    write_json(RESULTS / "attack.json", {**json.loads((RESULTS / "attack.json").read_text()), "summary": summary})


if __name__ == "__main__":
    main()
