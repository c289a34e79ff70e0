"""The embedding server, started for real on a free loopback port and hit over HTTP."""

import base64
import io
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import zoo
from conftest import CIFAR10_JPEG, needs_cifar10
from serving.decode import BadRequest, decode_image
from serving.onnx_export import max_abs_diff, onnx_session

pytestmark = needs_cifar10
JPEGS = [CIFAR10_JPEG / "test" / c / "0007.jpg" for c in ("cat", "ship", "frog", "truck")]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = zoo.EncoderConfig("resnet18_cifar", {"width": 8})
    return zoo.Encoder(config).save_pretrained(tmp_path_factory.mktemp("model"))


def _start(model_dir, *extra, headers=None):
    port = _port()
    proc = subprocess.Popen(["ssl-zoo", "serve", str(model_dir), "--port", str(port), "--max-images", "4",
                             "--max-pixels", "100000", "--max-body-mb", "1", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1, headers=headers).text == "ok":
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
    _stop(proc)
    raise RuntimeError("server did not become healthy")


def _stop(proc) -> None:
    """SIGTERM the server; then make sure no process of its group (LitServe workers) survives."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(model_dir):
    proc, url = _start(model_dir)
    yield url
    _stop(proc)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ok(url: str) -> None:
    r = httpx.post(f"{url}/embed", files=[("images", ("a.jpg", JPEGS[0].read_bytes(), "image/jpeg"))])
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1


def test_embeddings_equal_zoo_embed_in_input_order(server, model_dir):
    expected = zoo.embed(zoo.load(str(model_dir)), JPEGS).numpy()
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in JPEGS]
    multipart = httpx.post(f"{server}/embed", files=files).json()
    assert multipart["dim"] == 64 and multipart["model"] == str(model_dir)
    assert np.abs(np.array(multipart["embeddings"]) - expected).max() < 1e-5
    as_json = httpx.post(f"{server}/embed", json={"images": [_b64(p.read_bytes()) for p in JPEGS]}).json()
    assert np.abs(np.array(as_json["embeddings"]) - expected).max() < 1e-5
    normed = httpx.post(f"{server}/embed?normalize=true", files=files).json()["embeddings"]
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(normed, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, model_dir):
    expected = zoo.embed(zoo.load(str(model_dir)), JPEGS).numpy()
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    blobs = [p.read_bytes() for p in JPEGS]

    def send(i):  # 1-3 images per request, every other one normalised: batches mix both
        picks = [(i + k) % len(JPEGS) for k in range(1 + i % 3)]
        files = [("images", (f"{k}.jpg", blobs[k], "image/jpeg")) for k in picks]
        r = httpx.post(f"{server}/embed", files=files, params={"normalize": str(i % 2 == 1).lower()}, timeout=60)
        return picks, i % 2 == 1, r

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(36)))
    for picks, normalized, r in results:
        assert r.status_code == 200, r.text
        want = (unit if normalized else expected)[picks]
        assert np.abs(np.array(r.json()["embeddings"]) - want).max() < 1e-5


def test_openai_style_route(server, model_dir):
    expected = zoo.embed(zoo.load(str(model_dir)), JPEGS[:2]).numpy()
    inputs = [f"data:image/jpeg;base64,{_b64(JPEGS[0].read_bytes())}", _b64(JPEGS[1].read_bytes())]
    body = httpx.post(f"{server}/v1/embeddings", json={"input": inputs, "model": "m"}).json()
    assert [d["index"] for d in body["data"]] == [0, 1] and body["model"] == "m" and "usage" in body
    assert np.abs(np.array([d["embedding"] for d in body["data"]]) - expected).max() < 1e-5


def test_any_image_mode_is_converted_to_rgb(server, model_dir):
    base = Image.open(JPEGS[0]).convert("RGB")
    sixteen = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257))
    images = [base.convert("L"), base.convert("RGBA"), base.convert("P"), base.convert("CMYK"), sixteen]
    enc = zoo.load(str(model_dir))
    for im in images:
        data = _png(im) if im.mode != "CMYK" else _jpeg(im)
        r = httpx.post(f"{server}/embed", files=[("images", ("x", data, "application/octet-stream"))])
        assert r.status_code == 200, (im.mode, r.text)
        expected = zoo.embed(enc, [Image.open(io.BytesIO(data))]).numpy()
        assert np.abs(np.array(r.json()["embeddings"]) - expected).max() < 1e-5, im.mode


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG")
    return buf.getvalue()


def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server):
    jpeg = JPEGS[0].read_bytes()
    one = [("images", ("a.jpg", jpeg, "image/jpeg"))]
    cases = {
        "non-image bytes": dict(files=[("images", ("a.txt", b"hello world", "text/plain"))]),
        "truncated JPEG": dict(files=[("images", ("t.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"))]),
        "empty body": dict(content=b"", headers={"content-type": "application/json"}),
        "missing field": dict(files=[("pictures", ("a.jpg", jpeg, "image/jpeg"))]),
        "missing JSON key": dict(json={"imgs": [_b64(jpeg)]}),
        "too many pixels": dict(files=[("images", ("big.png", _png(Image.new("RGB", (400, 400))), "image/png"))]),
        "body too large": dict(files=[("images", ("a.bin", os.urandom(1_200_000), "image/png"))]),
        "too many images": dict(files=one * 5),
        "malformed base64": dict(json={"images": ["%%%not-base64%%%"]}),
        "malformed JSON": dict(content=b"{\"images\": [", headers={"content-type": "application/json"}),
        "JSON not an object": dict(json=[1, 2]),
        "empty image": dict(json={"images": [""]}),
    }
    for name, kwargs in cases.items():
        r = httpx.post(f"{server}/embed", **kwargs)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.json().get("error") or r.json().get("detail"), name
        _ok(server)
    r = httpx.post(f"{server}/v1/embeddings", json={"input": 42})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]
    _ok(server)


def test_api_key_is_required_when_set(model_dir):
    proc, url = _start(model_dir, "--api-key", "s3cret", headers={"X-API-Key": "s3cret"})
    try:
        files = [("images", ("a.jpg", JPEGS[0].read_bytes(), "image/jpeg"))]
        assert httpx.post(f"{url}/embed", files=files).status_code == 401
        assert httpx.post(f"{url}/embed", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        assert httpx.post(f"{url}/embed", files=files, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 401
    finally:
        _stop(proc)


def test_onnx_export_matches_torch_on_real_images(model_dir, tmp_path, cifar10_test):
    proc = subprocess.run(["ssl-zoo", "export-onnx", str(model_dir), "-o", str(tmp_path / "enc.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "onnx.checker passed" in proc.stdout, proc.stderr[-2000:]
    enc, session = zoo.load(str(model_dir)), onnx_session(tmp_path / "enc.onnx")
    for n in (1, 7):  # dynamic batch axis
        assert max_abs_diff(enc, session, enc.preprocess(cifar10_test.images[:n])) < 1e-4


def test_onnx_backend_serves_the_same_embeddings(model_dir):
    proc, url = _start(model_dir, "--backend", "onnx")
    try:
        expected = zoo.embed(zoo.load(str(model_dir)), JPEGS).numpy()
        files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in JPEGS]
        got = np.array(httpx.post(f"{url}/embed", files=files).json()["embeddings"])
        assert np.abs(got - expected).max() < 1e-4
        assert httpx.get(f"{url}/info").json()["model"]["backend"] == "onnx"
    finally:
        _stop(proc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048),
                 st.tuples(st.integers(0, 1500), st.binary(min_size=1, max_size=16)).map(
                     lambda t: _mutate(JPEGS[1].read_bytes(), *t))))
def test_decoder_never_fails_other_than_bad_request(data):
    try:
        out = decode_image(data, 32, 100_000)
    except BadRequest as e:
        assert 400 <= e.status < 500 and str(e)
    else:
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def _mutate(data: bytes, at: int, patch: bytes) -> bytes:
    at = min(at, len(data))
    return data[:at] + patch + data[at + len(patch):]
