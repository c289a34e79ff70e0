"""``ssl-zoo serve MODEL --index DIR``: ``POST /search`` against ``NeighborIndex`` on a 16-image collection
(4 CIFAR-10 classes), its ``k`` and body checks, the 404 without an index, and the start-up refusals."""

import asyncio
import os
import shutil
import sys

import httpx
import numpy as np
import pytest
import torch
from conftest import CIFAR10_JPEG, needs_cifar10, tiny_model_dir
from starlette.testclient import TestClient
from test_serving import JPEGS, ServerProcess, _b64, free_port

import zoo
from serving import routes
from serving.api import build_server, served_model
from serving.config import Limits, SearchSettings
from zoo.cli import main as cli_main
from zoo.retrieval.embed import embed_collection
from zoo.retrieval.index import NeighborIndex, build_index

pytestmark = needs_cifar10
CLASSES = ("cat", "ship", "frog", "truck")
MAX_K = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, width=4)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, model_dir):
    """Test images 0000-0003 of 4 classes (labelled by folder), embedded in 2 shards and indexed (exact)."""
    root = tmp_path_factory.mktemp("collection")
    for cls in CLASSES:
        (root / "images" / cls).mkdir(parents=True)
        for i in range(4):
            (root / "images" / cls / f"{i:04d}.jpg").symlink_to(CIFAR10_JPEG / "test" / cls / f"{i:04d}.jpg")
    embed_collection(root / "images", model_dir, root / "out", shard_size=8, workers=0, progress=False)
    build_index(root / "out")
    return root / "out"


@pytest.fixture(scope="module")
def index(collection):
    return NeighborIndex.load(collection)


@pytest.fixture(scope="module")
def server(model_dir, collection):
    s = ServerProcess(model_dir, "--index", str(collection), "--search-k", "5", "--max-search-k", str(MAX_K),
                      "--max-images", "4", "--max-body-mb", "1")
    yield s
    s.stop()


def _files(paths) -> list:
    return [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def _rows(results: list, index=None) -> list:
    """Each result's (row, path, label) hits; ``index``: the library's absolute paths made relative to the
    collection's folder, as the server answers them."""
    path = index.relative if index is not None else (lambda p: p)
    return [[(h["row"], path(h["path"]), h["label"]) for h in r["neighbors"]] for r in results]


def test_search_answers_what_neighbor_index_finds_with_the_knn_label(server, index):
    r = httpx.post(f"{server.url}/search", files=_files(JPEGS), params={"k": 7}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["k"] == 7 and got["index"] == {"rows": 16, "type": "flat"} and len(got["results"]) == len(JPEGS)
    want = index.search_images(JPEGS, 7)
    assert _rows(got["results"]) == _rows([{"neighbors": hits} for hits in want], index)
    assert not any(os.path.isabs(h["path"]) or str(index.root) in h["path"]  # no server paths leak
                   for r in got["results"] for h in r["neighbors"])
    np.testing.assert_allclose([[h["similarity"] for h in r["neighbors"]] for r in got["results"]],
                               [[h["similarity"] for h in hits] for hits in want], atol=1e-5)
    assert [r["label"] for r in got["results"]] == index.predict(index.embed(JPEGS), 7)


def test_json_and_raw_bodies_give_the_same_results_with_the_default_k(server, index):
    as_json = httpx.post(f"{server.url}/search", json={"images": [_b64(p.read_bytes()) for p in JPEGS[:2]]},
                         timeout=60).json()
    raw = httpx.post(f"{server.url}/search", content=JPEGS[1].read_bytes(), headers={"content-type": "image/jpeg"},
                     timeout=60).json()
    want = index.search_images(JPEGS[:2], 5)  # --search-k 5
    assert as_json["k"] == raw["k"] == 5
    assert _rows(as_json["results"]) == _rows([{"neighbors": hits} for hits in want], index)
    assert _rows(raw["results"]) == _rows(as_json["results"][1:])
    query = index.metadata["path"][6].as_py()  # an image of the collection: its nearest row is itself
    hit = httpx.post(f"{server.url}/search?k=1", content=open(query, "rb").read(),
                     headers={"content-type": "image/jpeg"}, timeout=60).json()["results"][0]
    assert hit["neighbors"][0]["row"] == 6 and abs(hit["neighbors"][0]["similarity"] - 1) < 1e-5
    assert hit["label"] == index.metadata["label"][6].as_py()


def test_k_and_normalize_are_checked(server):
    one = _files(JPEGS[:1])
    for bad in ("0", str(MAX_K + 1), "2.5", "abc", "-1", "", "9" * 40):
        r = httpx.post(f"{server.url}/search", files=one, params={"k": bad})
        assert r.status_code == 400 and f"k must be an integer from 1 to {MAX_K}" in r.json()["error"], bad
    assert httpx.post(f"{server.url}/search", files=one, params={"k": MAX_K}, timeout=60).status_code == 200
    for kwargs in (dict(files=one, params={"normalize": "true"}),
                   dict(json={"images": [_b64(JPEGS[0].read_bytes())], "normalize": False})):
        r = httpx.post(f"{server.url}/search", **kwargs)
        assert r.status_code == 400 and "normalize does not apply" in r.json()["error"]


def test_bad_requests_get_the_same_4xx_as_on_embed(server):
    one = _files(JPEGS[:1])
    cases = {"non-image bytes": dict(files=[("images", ("a.txt", b"hello world", "text/plain"))]),
             "too many images": dict(files=one * 5), "no images": dict(json={"images": []}),
             "body too large": dict(files=[("images", ("a.bin", b"\0" * 1_200_000, "image/png"))]),
             "unsupported content type": dict(content=b"hello", headers={"content-type": "text/plain"}),
             "unknown JSON field": dict(json={"images": [_b64(JPEGS[0].read_bytes())], "pictures": []})}
    for name, kwargs in cases.items():
        embed, search = (httpx.post(f"{server.url}{route}", **kwargs) for route in ("/embed", "/search"))
        assert 400 <= search.status_code < 500 and search.status_code == embed.status_code, name
        assert search.json() == embed.json(), name
    assert httpx.post(f"{server.url}/search", files=one, timeout=60).status_code == 200


def test_info_and_the_ready_line_show_the_index(server, collection, model_dir):
    info = httpx.get(f"{server.url}/info").json()["model"]["index"]
    assert info == {"directory": str(collection.resolve()), "rows": 16, "type": "flat", "labels": True, "k": 5,
                    "max_k": MAX_K, "model": str(model_dir)}
    assert f"POST {server.url}/search" in server.ready_line


def test_without_an_index_search_is_a_404_saying_how_to_start_one(model_dir):
    server = build_server(str(model_dir))
    assert server.model_metadata["index"] is None
    client = TestClient(server.app)
    r = client.post("/search", files=_files(JPEGS[:1]))
    assert r.status_code == 404 and "--index DIR" in r.json()["error"]
    for route in ("/map", "/collection?row=0"):  # the page's collection views too
        assert client.get(route).status_code == 404 and "--index DIR" in client.get(route).json()["error"]
    page = client.get("/")  # the page compares two images instead
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and "compare" in page.text
    r = client.post("/match", files=_files(JPEGS[:2]))
    assert r.status_code == 200 and len(r.json()["query"]) == 4 and -1 <= r.json()["similarity"] <= 1


def test_an_index_of_another_model_or_without_faiss_is_refused_at_start(model_dir, collection, tmp_path,
                                                                          monkeypatch, capsys):
    torch.manual_seed(1)  # same shape, other weights
    other = zoo.Encoder(zoo.EncoderConfig("resnet18_cifar", {"width": 4})).save_pretrained(tmp_path / "other")
    wider = zoo.Encoder(zoo.EncoderConfig("resnet18_cifar", {"width": 8})).save_pretrained(tmp_path / "wider")
    for model, backend, words in ((other, "torch", "sha256"), (other, "onnx", "sha256"), (wider, "torch", "64-d")):
        with pytest.raises(ValueError, match=f"{words}.*is not the one that embedded.*re-embed"):
            build_server(str(model), backend=backend, index=collection)  # before any ONNX export
    with pytest.raises(SystemExit, match="is not the one that embedded"):
        cli_main(["serve", str(other), "--index", str(collection), "--port", str(free_port())])
    with pytest.raises(ValueError, match="--search-k"):
        build_server(str(model_dir), index=collection, search_k=20, max_search_k=10)
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ValueError, match=r"ssl-zoo\[index\]"):
        build_server(str(model_dir), index=collection)


@pytest.fixture(scope="module")
def served(model_dir):
    return served_model(str(model_dir), zoo.fetch(str(model_dir)), "torch")


def test_concurrent_first_searches_open_the_index_once(served, collection, monkeypatch):
    loads = []
    monkeypatch.setattr(routes.NeighborIndex, "load", lambda directory: loads.append(directory) or directory)
    spec = routes.ImageEmbeddingSpec(served, Limits(), SearchSettings(str(collection)))

    async def first_searches():
        return await asyncio.gather(*(spec._index() for _ in range(8)))

    assert asyncio.run(first_searches()) == [str(collection)] * 8 and loads == [str(collection)]


def test_an_index_gone_since_the_start_is_a_500_saying_to_restart(served, tmp_path):
    spec = routes.ImageEmbeddingSpec(served, Limits(), SearchSettings(str(tmp_path)))
    with pytest.raises(routes.HTTPError, match="could not be opened.*restart the server") as e:
        asyncio.run(spec._index())
    assert e.value.status == 500


def test_a_failed_index_load_is_not_kept_a_restored_index_serves_again(served, collection, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(collection, copy)
    path = copy / "index.faiss"
    good = path.read_bytes()
    path.write_bytes(good[:100])  # damaged between the server's start-up check and an HTTP process opening it
    spec = routes.ImageEmbeddingSpec(served, Limits(), SearchSettings(str(copy)))

    async def open_twice():
        with pytest.raises(routes.HTTPError, match="restore its files") as failed:
            await spec._index()
        path.write_bytes(good)
        return failed.value.status, await spec._index()  # tried again, not the failure kept

    status, index = asyncio.run(open_twice())
    assert status == 500 and len(index) == 16


def test_metrics_record_each_querys_top1_similarity_for_drift(server, model_dir):
    from test_serving_ops import _scrape

    def top1(samples, suffix):
        return sum(v for labels, v in samples.get(f"ssl_zoo_search_top1_similarity_{suffix}", [])
                   if labels["model"] == str(model_dir))

    before = _scrape(server.url, headers={})
    r = httpx.post(f"{server.url}/search", files=_files(JPEGS[:3]), timeout=60)
    after = _scrape(server.url, headers={})
    nearest = [result["neighbors"][0]["similarity"] for result in r.json()["results"]]
    assert top1(after, "count") - top1(before, "count") == 3
    assert top1(after, "sum") - top1(before, "sum") == pytest.approx(sum(nearest), abs=1e-5)
