"""The server under abuse: oversized and slow headers, slow bodies, idle connections, a paused or
killed inference worker, a port in use, Ctrl-C. One server with short deadlines, stopped last."""

import os
import select
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch

import zoo
from conftest import needs_cifar10, tiny_model_dir
from test_serving import JPEGS, ServerProcess

pytestmark = needs_cifar10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, width=4)


@pytest.fixture(scope="module")
def tmpdir_of_server(tmp_path_factory):
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def server(model_dir, tmpdir_of_server):
    s = ServerProcess(model_dir, "--header-timeout", "2", "--body-timeout", "2", "--request-timeout", "4",
                      "--keep-alive", "2", "--max-header-kb", "16", "--max-inflight-mb", "1",
                      env={"TMPDIR": str(tmpdir_of_server)})
    yield s
    s.stop()


def _connect(server, timeout: float = 15) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _embed_ok(server) -> bool:
    r = httpx.post(f"{server.url}/embed", content=JPEGS[0].read_bytes(), headers={"content-type": "image/jpeg"},
                   timeout=30)
    return r.status_code == 200 and len(r.json()["embeddings"]) == 1


def _worker_pid(server) -> int:
    """The inference worker: the server's child started by multiprocessing's spawn."""
    for child in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((child / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (child / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server.proc.pid and b"spawn_main" in cmdline:
            return int(child.name)
    raise LookupError("no inference worker found")


def test_the_ready_line_names_the_model_and_every_endpoint(server, model_dir):
    line = server.ready_line
    assert str(model_dir) in line and "32-d" in line and "backend torch" in line
    for route in ("POST {}/embed", "POST {}/v1/embeddings", "GET {}/v1/models", "GET {}/health", "GET {}/ready",
                  "GET {}/metrics", "GET {}/info"):
        assert route.format(server.url) in line, route
    assert not any("Uvicorn running" in line for line in server.out + server.err)


def test_a_header_over_the_limit_gets_431_and_the_connection_is_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        assert _read_all(sock).startswith(b"HTTP/1.1 431")
    assert _embed_ok(server)


def test_slow_headers_are_cut_off(server):
    start = time.monotonic()
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        for _ in range(40):  # a byte every 0.25 s would take 10 s; the header deadline is 2 s
            if select.select([sock], [], [], 0.25)[0]:  # the server answered: stop sending
                break
            try:
                sock.sendall(b"a")
            except OSError:
                break
        try:
            answer = _read_all(sock)
        except ConnectionResetError:  # a byte sent just as the server closed: the reset can drop its 408
            answer = None
    if answer is None:
        assert 2 <= time.monotonic() - start < 10  # cut off at the header deadline all the same
    else:
        assert answer.startswith(b"HTTP/1.1 408")


def test_an_idle_connection_is_closed(server):
    with _connect(server) as sock:
        assert _read_all(sock) == b""  # closed by the server (a hung connection would time out the recv)


def test_a_slow_body_gets_408_and_the_connection_is_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                     + b"x" * 100)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer.lower()
    assert b"did not arrive within 2 s" in answer


def test_bodies_held_at_once_are_bounded(server):
    """Two stalled 600 KB bodies under a 1 MB budget: the second is refused (429) instead of held."""
    head = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 700000\r\n\r\n"
    with _connect(server) as first, _connect(server) as second:
        first.sendall(head + b"x" * 600_000)
        time.sleep(0.5)
        second.sendall(head + b"x" * 600_000)
        assert _read_all(second).startswith(b"HTTP/1.1 429")
        assert _read_all(first).startswith(b"HTTP/1.1 408")  # the body deadline frees the first
    assert _embed_ok(server)


def test_a_paused_worker_gives_504_and_the_server_recovers(server):
    worker = _worker_pid(server)
    os.kill(worker, signal.SIGSTOP)
    try:
        r = httpx.post(f"{server.url}/embed", content=JPEGS[0].read_bytes(), headers={"content-type": "image/jpeg"},
                       timeout=30)
    finally:
        os.kill(worker, signal.SIGCONT)
    assert r.status_code == 504 and "deadline of 4 s" in r.json()["error"]
    assert _embed_ok(server)


def test_a_killed_worker_is_restarted_and_ready_says_so_meanwhile(server):
    os.kill(_worker_pid(server), signal.SIGKILL)
    seen = []
    deadline = time.time() + 120
    while time.time() < deadline and not (503 in seen and seen[-1] == 200):
        status = httpx.get(f"{server.url}/ready", timeout=5).status_code
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200  # alive all along
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.1)
    assert seen[-2:] == [503, 200], seen
    assert _embed_ok(server)
    time.sleep(1.5)  # the server's own health watch polls once a second
    assert any("not ready" in line for line in server.err) and any("ready again" in line for line in server.err)


def test_a_port_in_use_exits_with_one_line_naming_it(server, model_dir):
    proc = subprocess.run(["ssl-zoo", "serve", str(model_dir), "--port", str(server.port)], capture_output=True,
                          text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert str(server.port) in lines[0] and "--port" in lines[0]


def test_one_client_address_cannot_take_every_connection(model_dir):
    s = ServerProcess(model_dir, "--max-client-connections", "4", "--header-timeout", "30")
    try:
        idle = [socket.create_connection(("127.0.0.1", s.port), timeout=15) for _ in range(4)]  # hold them, silent
        extra = socket.create_connection(("127.0.0.1", s.port), timeout=15)
        answer = _read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503") and b"holds 4 connections" in answer
        other = socket.create_connection(("127.0.0.1", s.port), timeout=15, source_address=("127.0.0.2", 0))
        other.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert _read_all(other).startswith(b"HTTP/1.1 200")  # another address is served meanwhile
        for sock in idle + [extra, other]:
            sock.close()
    finally:
        s.stop()


def test_a_restarted_worker_loads_only_the_weights_the_server_verified(model_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((model_dir / name).read_bytes())
    s = ServerProcess(folder)
    try:
        before = httpx.post(f"{s.url}/embed", content=JPEGS[0].read_bytes(), headers={"content-type": "image/jpeg"},
                            timeout=30).json()["embeddings"]
        good = (folder / "model.safetensors").read_bytes()
        torch.manual_seed(1)  # other weights of the same shape, swapped in behind the server's back
        zoo.Encoder(zoo.EncoderConfig("resnet18_cifar", {"width": 4})).save_pretrained(tmp_path / "other")
        (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
        os.kill(_worker_pid(s), signal.SIGKILL)
        deadline, answers = time.time() + 20, set()
        while time.time() < deadline:  # the restarted worker refuses the changed file: never ready, never other weights
            r = httpx.post(f"{s.url}/embed", content=JPEGS[0].read_bytes(), headers={"content-type": "image/jpeg"},
                           timeout=60)  # the server's own deadline is 30 s
            answers.add(r.status_code)
            assert r.status_code != 200 or r.json()["embeddings"] == before
            assert httpx.get(f"{s.url}/ready", timeout=5).status_code == 503 or r.status_code == 200
            time.sleep(1)
        assert 503 in answers  # refused at once, not after the deadline
        assert 200 not in answers
        (folder / "model.safetensors").write_bytes(good)  # restored: the next restart serves again
        deadline = time.time() + 120
        while time.time() < deadline and httpx.get(f"{s.url}/ready", timeout=5).status_code != 200:
            time.sleep(0.5)
        r = httpx.post(f"{s.url}/embed", content=JPEGS[0].read_bytes(), headers={"content-type": "image/jpeg"},
                       timeout=30)
        assert r.status_code == 200 and r.json()["embeddings"] == before
    finally:
        s.stop()


def test_normalize_twice_in_a_form_is_refused_and_a_key_file_gives_its_first_line(server, tmp_path):
    from serving.auth import read_api_key

    files = [("images", ("a.jpg", JPEGS[0].read_bytes(), "image/jpeg")), ("normalize", (None, "true")),
             ("normalize", (None, "false"))]  # two form fields of the same name
    r = httpx.post(f"{server.url}/embed", files=files, timeout=30)
    assert r.status_code == 400 and "normalize 2 times with different values" in r.json()["error"]
    (tmp_path / "key").write_text("s3cret\nsecond line, a comment\n")
    assert read_api_key(file=tmp_path / "key") == "s3cret"


def test_ctrl_c_stops_cleanly_and_removes_the_private_ipc_directory(server, tmpdir_of_server):
    ipc = list(tmpdir_of_server.glob("ssl-zoo-ipc-*"))
    assert len(ipc) == 1 and stat.S_IMODE(ipc[0].stat().st_mode) == 0o700
    assert server.stop(signal.SIGINT, group=True) == 0  # Ctrl-C reaches every process of the group
    assert any("stopped" in line for line in server.out)
    assert not any("Traceback" in line for line in server.err), "".join(server.err)
    assert not ipc[0].exists()
