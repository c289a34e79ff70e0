"""Serving in production: several models in one server, ``/metrics`` (Prometheus), ``/ready`` through start-up
and a SIGTERM drain, and the int8 ONNX backend with its accuracy guardrail."""

import signal
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import needs_cifar10, tiny_model_dir
from prometheus_client.parser import text_string_to_metric_families
from test_serving import JPEGS, ServerProcess, free_port

import zoo

pytestmark = needs_cifar10
KEY = "ops-key"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three models, two widths (so two embedding sizes in one server)."""
    import torch

    first, narrow = tiny_model_dir(tmp_path_factory, width=8), tiny_model_dir(tmp_path_factory, width=4)
    torch.manual_seed(7)
    other = zoo.Encoder(zoo.EncoderConfig("resnet18_cifar", {"width": 8})).save_pretrained(
        tmp_path_factory.mktemp("model-w8-seed7"))
    return [first, narrow, other]


@pytest.fixture(scope="module")
def server(models):
    s = ServerProcess(models, env={"SSL_ZOO_API_KEY": KEY})
    yield s
    s.stop()


def _auth() -> dict:
    return {"authorization": f"Bearer {KEY}"}


def _embed(server, model=None, path=JPEGS[0]) -> httpx.Response:
    params = {} if model is None else {"model": str(model)}
    return httpx.post(f"{server.url}/embed", params=params, content=path.read_bytes(), timeout=60,
                      headers={"content-type": "image/jpeg", **_auth()})


def _scrape(url: str, headers: dict | None = None) -> dict:
    """``GET /metrics`` parsed: {sample name: [(labels, value), ...]}."""
    r = httpx.get(f"{url}/metrics", headers=_auth() if headers is None else headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: dict = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def test_each_model_answers_with_its_own_weights_also_in_one_batch(server, models):
    expected = [zoo.embed(zoo.load(str(m)), JPEGS[:1]).numpy()[0] for m in models]
    assert len({e.shape for e in expected}) == 2  # two widths
    answers = [None] * 12

    def ask(i):  # 12 requests at once, the three models interleaved: batches mix models
        answers[i] = _embed(server, models[i % 3])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        assert r.json()["model"] == str(models[i % 3])
        np.testing.assert_allclose(r.json()["embeddings"][0], expected[i % 3], rtol=1e-4, atol=1e-5)
    default = _embed(server)
    assert default.json()["model"] == str(models[0])  # no model named: the first


def test_the_openai_route_and_v1_models_know_every_served_model(server, models):
    listed = httpx.get(f"{server.url}/v1/models", headers=_auth()).json()["data"]
    assert [m["id"] for m in listed] == [str(m) for m in models]
    import base64

    body = {"input": [base64.b64encode(JPEGS[1].read_bytes()).decode()], "model": str(models[1])}
    r = httpx.post(f"{server.url}/v1/embeddings", json=body, headers=_auth(), timeout=60)
    assert r.status_code == 200 and r.json()["model"] == str(models[1])
    vector = np.array(r.json()["data"][0]["embedding"])
    assert vector.shape == (zoo.load(str(models[1])).feature_dim,) and abs(np.linalg.norm(vector) - 1) < 1e-5


def test_an_unknown_model_is_a_404_listing_the_served_ones(server, models):
    for r in (_embed(server, "byol-cifar10"),
              httpx.post(f"{server.url}/v1/embeddings", json={"input": ["x"], "model": "nope"}, headers=_auth())):
        assert r.status_code == 404
        error = r.json()["error"]
        message = error if isinstance(error, str) else error["message"]
        assert all(str(m) in message for m in models) and "is not served here" in message


def test_one_model_under_two_names_is_refused_at_start(models):
    from serving.api import build_server
    from zoo.hub.registry import resolve

    default = resolve("simclr-cifar10")
    for names in (["simclr-cifar10", f"{default.name}.{default.tag}"], [str(models[0]), str(models[0])]):
        with pytest.raises(ValueError, match="are the same model .*serve it once"):
            build_server(names)


def test_metrics_count_requests_batches_norms_and_name_each_model(server, models):
    before = _scrape(server.url)
    for model in models:
        assert _embed(server, model).status_code == 200
    assert _embed(server, "nope").status_code == 404
    after = _scrape(server.url)

    def value(name, **labels):
        return sum(v for found, v in after.get(name, []) if labels.items() <= found.items()) - sum(
            v for found, v in before.get(name, []) if labels.items() <= found.items())

    assert value("ssl_zoo_requests_total", route="/embed", status="200") == 3
    assert value("ssl_zoo_requests_total", route="/embed", status="404") == 1
    assert value("ssl_zoo_batch_size_count") >= 1 and value("ssl_zoo_request_seconds_count", route="/embed") == 4
    for model in models:  # one image each: one norm observed per model, its value the embedding's norm
        norm = np.linalg.norm(zoo.embed(zoo.load(str(model)), JPEGS[:1]).numpy()[0])
        assert value("ssl_zoo_embedding_norm_count", model=str(model)) == 1
        assert value("ssl_zoo_embedding_norm_sum", model=str(model)) == pytest.approx(norm, rel=1e-4)
    info = {labels["model"]: labels for labels, v in after["ssl_zoo_model_info"] if v == 1}
    assert set(info) == {str(m) for m in models} and {i["backend"] for i in info.values()} == {"torch"}
    assert all(len(i["sha256"]) == 64 for i in info.values())
    assert "ssl_zoo_queue_depth" in after and "ssl_zoo_queue_wait_seconds_bucket" in after


def test_metrics_need_the_key_unless_public_and_probes_never_do(server):
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200 and httpx.get(f"{server.url}/ready").status_code == 200


def test_ready_only_once_warm_and_503_while_a_sigterm_drains(models):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(["ssl-zoo", "serve", str(models[0]), "--port", str(port), "--metrics-public",
                             "--drain-seconds", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        seen = []
        deadline = time.time() + 180
        while time.time() < deadline and (not seen or seen[-1] != 200):
            try:
                status = httpx.get(f"{url}/ready", timeout=5).status_code
            except httpx.TransportError:
                status = "refused"
            if not seen or seen[-1] != status:
                seen.append(status)
            time.sleep(0.05)
        assert seen[-1] == 200 and set(seen[:-1]) <= {"refused", 503}, seen
        start = time.perf_counter()  # ready means warm: the first request pays no model load
        assert httpx.post(f"{url}/embed", content=JPEGS[0].read_bytes(), headers={"content-type": "image/jpeg"},
                          timeout=60).status_code == 200
        assert time.perf_counter() - start < 2.0
        assert _scrape(url, headers={})["ssl_zoo_requests_total"]  # public: no key

        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 503  # load balancers stop sending
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # still alive
        assert httpx.post(f"{url}/embed", content=JPEGS[1].read_bytes(), headers={"content-type": "image/jpeg"},
                          timeout=60).status_code == 200  # and still serving what arrives meanwhile
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_int8_export_records_both_accuracies_and_the_server_runs_it(models, tmp_path):
    from zoo.onnx import read_metadata
    from zoo.quantize import record_in_card

    card = models[0] / "README.md"
    card.write_text("# a model\n\n## Results\n\n## Limitations\n\n- none\n")
    out = tmp_path / "int8.onnx"
    done = subprocess.run(["ssl-zoo", "export-onnx", str(models[0]), "-o", str(out), "--quantize", "int8",
                           "--max-accuracy-drop", "100"], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    meta = read_metadata(out)
    fp32, int8 = float(meta["knn200_fp32"]), float(meta["knn200_int8"])
    assert 0 < fp32 <= 1 and 0 < int8 <= 1 and f"{100 * int8:.2f} %" in done.stdout
    text = card.read_text()  # the model folder's card has both numbers, before its limitations
    assert f"| int8 | {100 * int8:.2f} % |" in text and f"| fp32 | {100 * fp32:.2f} % |" in text
    assert text.index("## int8 ONNX") < text.index("## Limitations") and text.endswith("- none\n")
    record_in_card(card, {"knn200_fp32": 0.5, "knn200_int8": 0.25, "protocol": {"train_images": 10,
                                                                               "test_images": 5}})
    again = card.read_text()  # a second export replaces the section
    assert again.count("## int8 ONNX") == 1 and "| int8 | 25.00 % |" in again and "## Limitations" in again
    s = ServerProcess(models[0], "--backend", "onnx-int8", "--onnx-file", str(out))
    try:
        r = httpx.post(f"{s.url}/embed", content=JPEGS[0].read_bytes(), headers={"content-type": "image/jpeg"},
                       timeout=60)
        expected = zoo.embed(zoo.load(str(models[0])), JPEGS[:1]).numpy()[0]
        got = np.array(r.json()["embeddings"][0])
        cosine = got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)
        assert r.status_code == 200 and cosine > 0.95 and not np.allclose(got, expected, atol=1e-6)  # int8, close
    finally:
        s.stop()


def test_the_guardrail_refuses_a_graph_that_loses_too_much(models, tmp_path, monkeypatch):
    from zoo import quantize
    from zoo.onnx import export_onnx

    encoder = zoo.load(str(models[0]))
    fp32 = export_onnx(encoder, tmp_path / "fp32.onnx")
    monkeypatch.setattr(quantize, "compare", lambda *a, **k: {"knn200_fp32": 0.70, "knn200_int8": 0.69,
                                                              "protocol": {}})
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match=r"loses 1.00 points .* over the allowed 0.5: not written"):
        quantize.quantize_int8(fp32, out, encoder)
    assert not out.exists()
    with pytest.raises(ValueError, match="--max-accuracy-drop must be"):
        quantize.quantize_int8(fp32, out, encoder, max_drop=-1)
