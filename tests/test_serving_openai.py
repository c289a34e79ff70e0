"""A server with an API key (read from $SSL_ZOO_API_KEY) and the ONNX backend, used by the official
``openai`` client as a user would."""

import base64

import httpx
import numpy as np
import openai
import pytest
import torch

import zoo
from conftest import needs_cifar10, tiny_model_dir
from serving.auth import read_api_key
from test_serving import JPEGS, ServerProcess

pytestmark = needs_cifar10
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, width=8)


@pytest.fixture(scope="module")
def server(model_dir):
    s = ServerProcess(model_dir, "--backend", "onnx", env={"SSL_ZOO_API_KEY": KEY})
    yield s
    s.stop()


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_the_openai_client_works_with_the_key_on_the_onnx_backend(server, model_dir):
    expected = zoo.embed(zoo.load(str(model_dir)), JPEGS[:2]).numpy()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    for encoding in ({}, {"encoding_format": "float"}):
        response = client.embeddings.create(model=str(model_dir), input=[_b64(p) for p in JPEGS[:2]], **encoding)
        unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
        assert np.abs(np.array([d.embedding for d in response.data]) - unit).max() < 1e-4
    assert [m.id for m in client.models.list()] == [str(model_dir)]
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        wrong.embeddings.create(model=str(model_dir), input=[_b64(JPEGS[0])])
    info = httpx.get(f"{server.url}/info", headers={"Authorization": f"Bearer {KEY}"}).json()["model"]
    assert info["backend"] == "onnx" and info["onnx_file"].endswith(".onnx")
    assert "API key required" in server.ready_line and "backend onnx" in server.ready_line


def test_every_route_but_the_probes_and_the_pages_files_needs_the_key(server):
    files = [("images", ("a.jpg", JPEGS[0].read_bytes(), "image/jpeg"))]
    assert httpx.post(f"{server.url}/embed", files=files).status_code == 401
    assert httpx.post(f"{server.url}/embed", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.post(f"{server.url}/embed", files=files, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.post(f"{server.url}/embed", files=files, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    for path in ("/health", "/ready", "/", "/page/app.js", "/page/style.css"):  # probes; the page asks for the key
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
    for path in ("/info", "/v1/models", "/metrics", "/map", "/collection?row=0"):
        assert httpx.get(f"{server.url}{path}").status_code == 401, path
    assert httpx.post(f"{server.url}/match", files=files * 2).status_code == 401
    for path in ("/docs", "/openapi.json", "/redoc"):  # off when a key is set
        assert httpx.get(f"{server.url}{path}", headers={"X-API-Key": KEY}).status_code == 404, path


def test_the_key_comes_from_a_file_the_environment_or_the_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_ZOO_API_KEY", raising=False)
    monkeypatch.delenv("LIT_SERVER_API_KEY", raising=False)
    assert read_api_key() is None
    monkeypatch.setenv("LIT_SERVER_API_KEY", "legacy")
    assert read_api_key() == "legacy"
    monkeypatch.setenv("SSL_ZOO_API_KEY", "from-env")
    assert read_api_key() == "from-env" and read_api_key("from-flag") == "from-flag"
    (tmp_path / "key").write_text("from-file\n")
    assert read_api_key("from-flag", tmp_path / "key") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_api_key(file=tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot read"):
        read_api_key(file=tmp_path / "missing")
