"""The embedding server, started for real on a free loopback port and hit over HTTP (and with the
official ``openai`` client). ``ServerProcess`` is shared by the other test_serving_* modules."""

import base64
import functools
import io
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import zoo
from conftest import CIFAR10_JPEG, REPO, free_port, needs_cifar10, tiny_model_dir
from serving.api import build_server
from serving.config import ImageLimits
from serving.decode import HTTPError, decode_image
from zoo.onnx import max_abs_diff, onnx_session, read_metadata

pytestmark = needs_cifar10
JPEGS = [CIFAR10_JPEG / "test" / c / "0007.jpg" for c in ("cat", "ship", "frog", "truck")]
SMALL_LIMITS = ImageLimits(max_pixels=400_000)


class ServerProcess:
    """``ssl-zoo serve`` of one model (or a list) in its own process group; its output is collected; ready once it
    prints its ready line."""

    def __init__(self, model_dir, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = [], []
        models = [str(m) for m in (model_dir if isinstance(model_dir, list) else [model_dir])]
        self.proc = subprocess.Popen(["ssl-zoo", "serve", *models, "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, ls=lines: ls.extend(iter(s.readline, "")), daemon=True).start()
        deadline = time.time() + 180
        while not any("ready:" in line for line in self.out):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"server did not become ready: {''.join(self.err)[-3000:]}")
            time.sleep(0.1)
        self.ready_line = next(line for line in self.out if "ready:" in line)

    def stop(self, signum: int = signal.SIGINT, group: bool = False) -> int:
        """Send ``signum`` (to the whole group: as Ctrl-C does; SIGTERM would drain first) and wait; then no
        process of the group survives."""
        try:
            os.killpg(self.proc.pid, signum) if group else self.proc.send_signal(signum)
            return self.proc.wait(timeout=60)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, width=8)


@pytest.fixture(scope="module")
def expected(model_dir):
    return zoo.embed(zoo.load(str(model_dir)), JPEGS).numpy()


@pytest.fixture(scope="module")
def server(model_dir):
    s = ServerProcess(model_dir, "--max-images", "4", "--max-pixels", str(SMALL_LIMITS.max_pixels),
                      "--max-body-mb", "1")
    yield s.url
    s.stop()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ok(url: str) -> None:
    r = httpx.post(f"{url}/embed", files=[("images", ("a.jpg", JPEGS[0].read_bytes(), "image/jpeg"))])
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1


def _readme_first_screen() -> list[str]:
    """The commands of the README's first code block, comments stripped."""
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return [c for c in (line.split("  #")[0].strip() for line in block.splitlines()) if c]


def test_the_readme_first_screen_serves_the_bundled_model_and_its_curl_gets_the_embedding(tmp_path):
    setup, serve, curl, tests = _readme_first_screen()
    assert setup.startswith("python -m pip install") and tests == "python -m pytest -q"  # what .ci/run runs
    model, *flags = shlex.split(serve.removesuffix("&"))[2:]
    s = ServerProcess(model, *flags, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})  # no network, no cache
    try:
        field, image = re.search(r"-F (\w+)=@(\S+)", curl).groups()
        route = re.search(r"http://127\.0\.0\.1:8000(/\S*)", curl).group(1)
        path = REPO / image  # the README runs from the repository root
        r = httpx.post(s.url + route, files=[(field, (path.name, path.read_bytes(), "image/jpeg"))])
        assert r.status_code == 200, r.text
        expected = zoo.embed(zoo.load(model), [path]).numpy()
        np.testing.assert_allclose(np.array(r.json()["embeddings"]), expected, rtol=1e-4, atol=1e-5)
    finally:
        s.stop()


def test_embeddings_equal_zoo_embed_in_input_order(server, model_dir, expected):
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in JPEGS]
    multipart = httpx.post(f"{server}/embed", files=files).json()
    assert multipart["dim"] == 64 and multipart["model"] == str(model_dir)
    assert np.abs(np.array(multipart["embeddings"]) - expected).max() < 1e-5
    as_json = httpx.post(f"{server}/embed", json={"images": [_b64(p.read_bytes()) for p in JPEGS]}).json()
    assert np.abs(np.array(as_json["embeddings"]) - expected).max() < 1e-5
    normed = httpx.post(f"{server}/embed?normalize=true", files=files).json()["embeddings"]
    np.testing.assert_allclose(normed, _unit(expected), atol=1e-5)


def test_a_raw_image_body_is_one_image_and_other_content_types_are_refused(server, expected):
    r = httpx.post(f"{server}/embed", content=JPEGS[2].read_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and np.abs(np.array(r.json()["embeddings"]) - expected[2:3]).max() < 1e-5
    png = _png(Image.open(JPEGS[1]))
    r = httpx.post(f"{server}/embed", content=png, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200 and np.abs(np.array(r.json()["embeddings"]) - expected[1:2]).max() < 1e-5
    r = httpx.post(f"{server}/embed", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "image/jpeg" in r.json()["error"] and "multipart" in r.json()["error"]
    r = httpx.post(f"{server}/embed", content=JPEGS[0].read_bytes(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and "raw image" in r.json()["error"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, expected):
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
        want = (_unit(expected) if normalized else expected)[picks]
        assert np.abs(np.array(r.json()["embeddings"]) - want).max() < 1e-5


def test_normalize_is_parsed_one_strict_way_everywhere(server, expected):
    jpeg = JPEGS[0].read_bytes()
    raw, unit = expected[:1], _unit(expected[:1])

    def embed(**kwargs):
        r = httpx.post(f"{server}/embed", **kwargs)
        return r.status_code, (np.array(r.json()["embeddings"]) if r.status_code == 200 else r.json()["error"])

    for value, want in (("false", raw), (False, raw), (0, raw), ("0", raw), ("true", unit), (True, unit), (1, unit)):
        status, got = embed(json={"images": [_b64(jpeg)], "normalize": value})
        assert status == 200 and np.abs(got - want).max() < 1e-5, value
    for query, want in (("false", raw), ("1", unit), ("TRUE", unit)):
        status, got = embed(content=jpeg, headers={"content-type": "image/jpeg"}, params={"normalize": query})
        assert status == 200 and np.abs(got - want).max() < 1e-5, query
    status, got = embed(files=[("images", ("a.jpg", jpeg, "image/jpeg"))], data={"normalize": "false"})
    assert status == 200 and np.abs(got - raw).max() < 1e-5
    for bad in ("maybe", "yes", 2, 1.0, [True]):
        status, message = embed(json={"images": [_b64(jpeg)], "normalize": bad})
        assert status == 400 and "true or false" in message, bad
    status, message = embed(json={"images": [_b64(jpeg)], "normalize": True}, params={"normalize": "false"})
    assert status == 400 and "twice" in message


def test_any_image_mode_is_converted_to_rgb(server, model_dir):
    base = Image.open(JPEGS[0]).convert("RGB")
    sixteen = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257))
    images = [base.convert("L"), base.convert("RGBA"), base.convert("P"), base.convert("CMYK"), sixteen]
    enc = zoo.load(str(model_dir))
    for im in images:
        data = _png(im) if im.mode != "CMYK" else _jpeg(im)
        r = httpx.post(f"{server}/embed", files=[("images", ("x", data, "application/octet-stream"))])
        assert r.status_code == 200, (im.mode, r.text)
        want = zoo.embed(enc, [Image.open(io.BytesIO(data))]).numpy()
        assert np.abs(np.array(r.json()["embeddings"]) - want).max() < 1e-5, im.mode


def test_a_20_megapixel_jpeg_is_decoded_at_a_reduced_scale(server, model_dir):
    """Refused (413) before JPEGs were decoded with draft(); a PNG of the same size still is."""
    x, y = np.meshgrid(np.linspace(0, 255, 5000), np.linspace(0, 255, 4000))
    photo = Image.fromarray(np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8))
    jpeg = _jpeg(photo, quality=50)
    assert len(jpeg) < 1024 * 1024
    r = httpx.post(f"{server}/embed", content=jpeg, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    want = zoo.embed(zoo.load(str(model_dir)), [jpeg]).numpy()
    assert np.abs(np.array(r.json()["embeddings"]) - want).max() < 1e-5
    buf = io.BytesIO()  # the same photo as a camera writes it: MPO, a JPEG with a second (preview) frame
    photo.save(buf, "MPO", save_all=True, append_images=[photo.resize((160, 128))], quality=50)
    r = httpx.post(f"{server}/embed", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and np.abs(np.array(r.json()["embeddings"]) - want).max() < 1e-5
    small_png = _png(photo.resize((1000, 800)))  # 800,000 decoded pixels: over the limit of 400,000
    r = httpx.post(f"{server}/embed", content=small_png, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "decodes to 1000x800" in r.json()["error"]


def test_bad_input_gets_a_4xx_that_says_what_was_wrong_and_the_server_keeps_serving(server):
    jpeg = JPEGS[0].read_bytes()
    one = [("images", ("a.jpg", jpeg, "image/jpeg"))]
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    thin = _png(Image.new("L", (16_777_216, 1)))  # 16 KB file; under the file-pixel limit
    cases = {
        "non-image bytes": (dict(files=[("images", ("a.txt", b"hello world", "text/plain"))]), "WebP"),
        "EPS (a format Pillow reads, not allowed)": (dict(content=eps, headers={"content-type": "image/jpeg"}),
                                                     "JPEG, PNG, WebP, GIF, BMP or TIFF"),
        "truncated JPEG": (dict(files=[("images", ("t.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"))]), "truncated"),
        "empty body": (dict(content=b"", headers={"content-type": "application/json"}), "empty"),
        "missing field": (dict(files=[("pictures", ("a.jpg", jpeg, "image/jpeg"))]), "pictures"),
        "missing JSON key": (dict(json={"imgs": [_b64(jpeg)]}), "imgs"),
        "too many pixels": (dict(files=[("images", ("big.png", _png(Image.new("RGB", (700, 700))), "image/png"))]),
                            "400000"),
        "long thin PNG (16,777,216 x 1)": (dict(content=thin, headers={"content-type": "image/png"}), "aspect ratio"),
        "body too large": (dict(files=[("images", ("a.bin", os.urandom(1_200_000), "image/png"))]), "limit"),
        "too many images": (dict(files=one * 5), "split"),
        "malformed base64": (dict(json={"images": ["%%%not-base64%%%"]}), "base64"),
        "text instead of an image": (dict(json={"images": ["a photo of a cat"]}), "embeds images"),
        "malformed JSON": (dict(content=b"{\"images\": [", headers={"content-type": "application/json"}), "JSON"),
        "JSON not an object": (dict(json=[1, 2]), "object"),
        "JSON nested 100,000 deep": (dict(content=b"[" * 100_000 + b"]" * 100_000,
                                          headers={"content-type": "application/json"}), "structure"),
        "JSON nested 5,000 deep in a field": (dict(content=b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                                   headers={"content-type": "application/json"}), "structure"),
        "JSON of many small values": (dict(content=b'{"images": [' + b"0," * 50_000 + b"0]}",
                                           headers={"content-type": "application/json"}), "structure"),
        "unknown JSON field": (dict(json={"images": [_b64(jpeg)], "normalise": True}), "normalise"),
        "empty image": (dict(json={"images": [""]}), "empty"),
    }
    for name, (kwargs, words) in cases.items():
        r = httpx.post(f"{server}/embed", **kwargs)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert words in r.json()["error"], (name, r.json())
        _ok(server)


def test_decoding_is_bounded_for_any_shape():
    """Shapes that once made a 3x32x(32N) array (1 x N images under the pixel limit) are refused or cheap."""
    limits = ImageLimits(max_pixels=100_000, max_aspect_ratio=32)
    for size in ((32 * 32, 32), (32, 32 * 32), (1, 1), (32, 1)):
        out = decode_image(_png(Image.new("RGB", size, (10, 20, 30))), 32, limits)
        assert out.shape == (32, 32, 3) and (out == (10, 20, 30)).all(), size
    for size in ((100_000, 1), (1, 100_000), (33 * 32, 32)):
        with pytest.raises(HTTPError, match="aspect ratio") as e:
            decode_image(_png(Image.new("L", size)), 32, limits)
        assert e.value.status == 400


@pytest.fixture(scope="module")
def openai_client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0)


def test_the_openai_client_gets_the_embeddings_in_both_encodings(server, openai_client, model_dir, expected):
    inputs = [f"data:image/jpeg;base64,{_b64(JPEGS[0].read_bytes())}", _b64(JPEGS[1].read_bytes())]
    default = openai_client.embeddings.create(model=str(model_dir), input=inputs)  # asks for base64, decodes it
    floats = openai_client.embeddings.create(model=f"local-dir:{model_dir}", input=inputs, encoding_format="float")
    for response in (default, floats):  # unit vectors, as OpenAI's: its clients take cosine as a dot product
        assert [d.index for d in response.data] == [0, 1] and response.model == str(model_dir)
        vectors = np.array([d.embedding for d in response.data])
        assert np.abs(vectors - _unit(expected[:2])).max() < 1e-5
        assert np.abs(np.linalg.norm(vectors, axis=1) - 1).max() < 1e-5
    raw_features = httpx.post(f"{server}/v1/embeddings", json={"input": inputs, "normalize": False}).json()
    assert np.abs(np.array([d["embedding"] for d in raw_features["data"]]) - expected[:2]).max() < 1e-5
    raw = httpx.post(f"{server}/v1/embeddings", json={"input": inputs, "encoding_format": "base64"}).json()
    as_floats = httpx.post(f"{server}/v1/embeddings", json={"input": inputs}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in raw["data"]])
    assert np.array_equal(decoded, np.array([d["embedding"] for d in as_floats["data"]], dtype=np.float32))
    assert [m.id for m in openai_client.models.list()] == [str(model_dir)]


def test_the_openai_route_refuses_what_it_cannot_honour(server, openai_client, model_dir):
    image = _b64(JPEGS[0].read_bytes())
    with pytest.raises(openai.NotFoundError, match=f"not served here.*{re.escape(str(model_dir))}"):
        openai_client.embeddings.create(model="text-embedding-3-small", input=[image])
    with pytest.raises(openai.BadRequestError, match="64 dimensions"):
        openai_client.embeddings.create(model=str(model_dir), input=[image], dimensions=8)
    with pytest.raises(openai.BadRequestError, match="embeds images"):
        openai_client.embeddings.create(model=str(model_dir), input="a photo of a cat")
    with pytest.raises(openai.BadRequestError, match="embeds images"):
        openai_client.embeddings.create(model=str(model_dir), input=[[101, 2023, 102]])
    r = httpx.post(f"{server}/v1/embeddings", json={"input": [image], "encoding_format": "int8"})
    assert r.status_code == 400 and "encoding_format" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/embeddings", json={"input": 42})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]
    _ok(server)


def test_onnx_export_carries_its_preprocessing_and_matches_torch(model_dir, tmp_path, cifar10_test):
    proc = subprocess.run(["ssl-zoo", "export-onnx", str(model_dir), "-o", str(tmp_path / "enc.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "onnx.checker passed" in proc.stdout, proc.stderr[-2000:]
    enc, session = zoo.load(str(model_dir)), onnx_session(tmp_path / "enc.onnx")
    for n in (1, 7):  # dynamic batch axis
        assert max_abs_diff(enc, session, enc.preprocess(cifar10_test.images[:n])) < 1e-4
    meta = read_metadata(tmp_path / "enc.onnx")
    assert meta["input_size"] == "32" and meta["feature_dim"] == "64" and meta["mean"] == "null"
    assert meta["sha256"] == zoo.fetch(str(model_dir)).provenance["sha256"]
    torch.manual_seed(1)  # another model of the same shape: the file is not its export
    other = zoo.Encoder(zoo.EncoderConfig("resnet18_cifar", {"width": 8})).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="was not exported from this model.*sha256"):
        build_server(str(other), backend="onnx", onnx_file=tmp_path / "enc.onnx")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048),
                 st.tuples(st.sampled_from([0, 1]), st.integers(0, 1500), st.binary(min_size=1, max_size=16)).map(
                     lambda t: _mutate(_seeds()[t[0]], *t[1:]))))
def test_decoder_never_fails_other_than_bad_request(data):
    try:
        out = decode_image(data, 32, ImageLimits(max_pixels=100_000))
    except HTTPError as e:
        assert 400 <= e.status < 500 and str(e)
    else:
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


@functools.cache
def _seeds() -> tuple[bytes, bytes]:
    """A JPEG and a PNG to damage."""
    return JPEGS[1].read_bytes(), _png(Image.open(JPEGS[1]).resize((40, 24)))


def _mutate(data: bytes, at: int, patch: bytes) -> bytes:
    at = min(at, len(data))
    return data[:at] + patch + data[at + len(patch):]
