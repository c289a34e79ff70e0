"""``ssl-zoo index`` / ``neighbors`` and ``NeighborIndex``: exact cosine search equal to brute force,
IVF equal to exact when every list is probed, k-NN labels, stale-index and wrong-model errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CIFAR10_JPEG
from zoo import Encoder, EncoderConfig
from zoo.cli import main as cli_main
from zoo.retrieval.embed import embed_collection
from zoo.retrieval.shards import load_collection
from zoo.io import write_json
from zoo.retrieval.index import NeighborIndex, build_index, vote


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """An embed output of 300 CIFAR-10 test JPEGs (30 per class, 3 shards) by a width-8 encoder."""
    if not (CIFAR10_JPEG / "test").is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR10_JPEG}")
    root = tmp_path_factory.mktemp("collection")
    torch.manual_seed(0)
    model = Encoder(EncoderConfig("resnet18_cifar", {"width": 8})).save_pretrained(root / "model")
    images = root / "images"
    for cls in sorted((CIFAR10_JPEG / "test").iterdir()):
        (images / cls.name).mkdir(parents=True)
        for path in sorted(cls.glob("*.jpg"))[:30]:
            (images / cls.name / path.name).symlink_to(path)
    embed_collection(images, model, root / "out", shard_size=128, workers=0, progress=False)
    return root / "out"


def _exact(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k in float64: (indices, similarities)."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ x.T.astype(np.float64)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def test_flat_search_equals_brute_force_cosine(collection):
    info = build_index(collection)
    assert info["type"] == "flat" and info["rows"] == 300
    index = NeighborIndex.load(collection)
    embeddings, metadata = load_collection(collection)
    queries = embeddings[::37] + np.random.default_rng(0).normal(0, 0.05, embeddings[::37].shape).astype(np.float32)
    order, sims = _exact(embeddings, queries, 5)
    results = index.search(queries, k=5)
    for hits, want, want_sims in zip(results, order, sims):
        np.testing.assert_allclose([h["similarity"] for h in hits], want_sims, atol=1e-5)
        got = [h["row"] for h in hits]
        assert got == list(want) or np.ptp(want_sims) < 1e-5  # equal up to ties
        assert all(h["path"] == metadata["path"][i].as_py() and h["label"] == metadata["label"][i].as_py()
                   for h, i in zip(hits, got))
    assert index.search(torch.from_numpy(queries[0]), k=2)[0] == results[0][:2]  # one (D,) torch vector


def test_ivf_probing_every_list_equals_exact(collection):
    build_index(collection, kind="ivf", nlist=4)
    assert json.loads((collection / "index.json").read_text())["nlist"] == 4
    embeddings, _ = load_collection(collection)
    ivf = NeighborIndex.load(collection, nprobe=4).search(embeddings[:20], k=10)
    build_index(collection)
    exact = NeighborIndex.load(collection).search(embeddings[:20], k=10)
    assert [[h["row"] for h in hits] for hits in ivf] == [[h["row"] for h in hits] for hits in exact]


def test_predict_and_search_images_use_the_manifests_model(collection):
    build_index(collection)
    index = NeighborIndex.load(collection)
    embeddings, metadata = load_collection(collection)
    assert index.predict(embeddings, k=1) == metadata["label"].to_pylist()  # each row's nearest is itself
    query = metadata["path"][42].as_py()
    hits = index.search_images([query, Image.open(query)], k=3)
    assert [h[0]["row"] for h in hits] == [42] * 2
    assert hits[0][0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_vote_is_majority_then_summed_similarity():
    hits = [{"label": "cat", "similarity": 0.9}, {"label": "dog", "similarity": 0.8},
            {"label": "dog", "similarity": 0.7}, {"label": "cat", "similarity": 0.5}, {"label": None, "similarity": 1}]
    assert vote(hits) == "dog"  # 2-2 tie; dog's 1.5 beats cat's 1.4
    assert vote(hits + [{"label": "cat", "similarity": 0.1}]) == "cat"
    assert vote([{"label": None, "similarity": 1.0}]) is None


def test_neighbors_command_prints_top_k_and_writes_grid(collection, tmp_path, capsys):
    assert cli_main(["index", str(collection)]) == 0
    _, metadata = load_collection(collection)
    queries = [metadata["path"][i].as_py() for i in (0, 150)]
    grid = tmp_path / "grid.png"
    assert cli_main(["neighbors", "--index", str(collection), *queries, "-k", "4", "--grid", str(grid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    firsts = [lines[i + 1] for i, line in enumerate(lines) if line.startswith(tuple(queries))]
    assert [line.split()[-1] for line in firsts] == queries and "1.0000" in firsts[0]
    assert sum(line.strip().startswith(("1 ", "2 ", "3 ", "4 ")) for line in lines) == 8
    with Image.open(grid) as im:
        assert im.size == (5 * 96, 2 * (96 + 28))


def test_stale_index_wrong_model_and_bad_queries_are_refused(collection, tmp_path):
    build_index(collection)
    index = NeighborIndex.load(collection)
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        index.search(np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="positive integer"):
        index.search(np.zeros(64, np.float32), k=0)
    with pytest.raises(ValueError, match="apply to an IVF index"):
        build_index(collection, nprobe=4)  # 300 rows: exact
    with pytest.raises(ValueError, match="nprobe <= nlist"):
        build_index(collection, kind="ivf", nlist=4, nprobe=5)
    manifest_path = collection / "manifest.json"
    original = manifest_path.read_bytes()
    manifest = json.loads(original)
    try:
        write_json(manifest_path, {**manifest, "model": {**manifest["model"], "sha256": "0" * 64}})
        with pytest.raises(ValueError, match="ssl-zoo index"):
            NeighborIndex.load(collection)  # the manifest changed since the index was built
        build_index(collection)
        with pytest.raises(ValueError, match="re-embed"):
            NeighborIndex.load(collection).encoder  # the model's weights are not the embedded ones
    finally:
        manifest_path.write_bytes(original)
        build_index(collection)
    wider = Encoder(EncoderConfig("resnet18_cifar", {"width": 16}))
    with pytest.raises(ValueError, match="re-embed"):
        NeighborIndex.load(collection, encoder=wider).encoder  # 128-d queries for a 64-d collection
    assert cli_main(["neighbors", "--index", str(collection), str(tmp_path / "missing.jpg")]) == 2
    assert cli_main(["neighbors", "--index", str(tmp_path), "x.jpg"]) == 2  # not an embed output


def test_a_hits_row_indexes_the_vectors_even_when_files_failed(tmp_path):
    """``vectors[hit["row"]]`` is the hit's own vector; the file's position in the input list is ``file_index``
    (with failed files before it, the two differ: the trap a user fell into)."""
    if not (CIFAR10_JPEG / "test").is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR10_JPEG}")
    torch.manual_seed(0)
    model = Encoder(EncoderConfig("resnet18_cifar", {"width": 8})).save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    (images / "0-broken.jpg").write_text("not an image")
    (images / "1-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    for i, path in enumerate(sorted((CIFAR10_JPEG / "test" / "cat").glob("*.jpg"))[:6]):
        (images / f"{i + 2}-cat.jpg").symlink_to(path)
    embed_collection(images, model, tmp_path / "out", workers=0, progress=False)
    build_index(tmp_path / "out")
    vectors, metadata = load_collection(tmp_path / "out")
    index = NeighborIndex.load(tmp_path / "out")
    for query in sorted(images.glob("*-cat.jpg")):
        hit = index.search_images([query], k=1)[0][0]
        assert hit["path"] == str(query) and hit["file_index"] == int(query.name.split("-")[0])
        assert hit["row"] == hit["file_index"] - 2 and metadata["path"][hit["row"]].as_py() == str(query)
        np.testing.assert_allclose(vectors[hit["row"]], index.encoder.embed(query)[0].numpy(), atol=1e-5)
