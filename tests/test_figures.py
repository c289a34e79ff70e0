"""The model-card figures (zoo.eval.figures), `ssl-zoo card` and `ssl-zoo compare`, on a random-init width-4 encoder
and the first few CIFAR-10 images of each class."""

import functools
import hashlib
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import needs_cifar10, tiny_model_dir
from PIL import Image

import zoo
from zoo.cli import main
from zoo.eval import figures
from zoo.eval.figures import FIGURES, CardData
from zoo.hub import publish

pytestmark = needs_cifar10
SMALL = {"train_per_class": 20, "test_per_class": 10, "map_per_class": 10}  # 200 / 100 / 100 images
PROTOCOL = {"train_images": 200, "test_images": 100, "batch_norm": "eval"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder with what a finished training run records: method, epochs, results, training config."""
    folder = tiny_model_dir(tmp_path_factory, width=4)
    config = json.loads((folder / "config.json").read_text())
    protocol = {"knn200": {"probe": "knn", "k": 200, "weighted": True, "temperature": 0.1, **PROTOCOL},
                "linear": {"probe": "linear", "solver": "fast", "C": 1.0, **PROTOCOL}}
    config |= {"method": "simclr", "epochs": 1, "training": {"method": "simclr", "epochs": 1, "batch_size": 64},
               "results": {"knn200": 0.25, "linear": 0.3, "protocol": protocol, **PROTOCOL}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def card_data(model_dir):
    return CardData(zoo.load(model_dir), **SMALL)


@pytest.fixture
def small_figures(monkeypatch, tmp_path):
    """Card figures on SMALL splits wherever the card, publish and compare draw them, cached under tmp_path."""
    monkeypatch.setattr(figures, "default_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(publish, "card_figures", functools.partial(figures.card_figures, **SMALL))
    monkeypatch.setattr(figures, "CardData", functools.partial(CardData, **SMALL))


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_card_figures_are_small_pngs_of_card_width(card_data):
    draw = {figures.RETRIEVAL: figures.retrieval_figure, figures.EMBEDDING_MAP: figures.embedding_map_figure,
            figures.PER_CLASS: figures.per_class_figure, figures.MATCHES: figures.matches_figure}
    assert set(draw) == set(FIGURES)
    for name, function in draw.items():
        png = function(card_data, "tiny")
        assert len(png) < 300_000, name
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            assert image.format == "PNG" and image.width == 800 and 400 <= image.height <= 1200, (name, image.size)


def test_retrieval_neighbours_are_the_brute_force_cosine_top_8(card_data):
    found, encoder = card_data.retrieval, card_data.encoder
    labels = card_data.test.labels
    assert found.queries.tolist() == [int(np.flatnonzero(labels == c)[0]) for c in range(10)]  # first of each class
    bank = encoder.embed(card_data.train.images, normalize=True).double().numpy()
    queries = encoder.embed(card_data.test.images[found.queries], normalize=True).double().numpy()
    similarity = queries @ bank.T
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :8]
    chosen = np.take_along_axis(similarity, found.neighbors, 1)
    # rank by rank the same similarity (random-init features are nearly parallel: ties within float32 rounding
    # may be ordered either way), and the similarity the figure prints is that one
    np.testing.assert_allclose(chosen, np.take_along_axis(similarity, expected, 1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(found.similarity, chosen, rtol=0, atol=1e-6)
    assert found.neighbors.shape == (10, 8) and len({*found.neighbors.ravel().tolist()}) > 8


def test_match_heatmaps_are_each_cells_best_cosine_similarity(card_data):
    found, encoder = card_data.matches, card_data.encoder
    assert found.neighbors.tolist() == card_data.retrieval.neighbors[list(figures.MATCH_CLASSES), 0].tolist()
    with torch.inference_mode():
        maps = [encoder.forward_features(encoder.preprocess(images))  # (P, C, 4, 4)
                for images in (card_data.test.images[found.queries], card_data.train.images[found.neighbors])]
    cells = [m.flatten(2).transpose(1, 2) for m in maps]  # (P, 16, C)
    cosine = F.cosine_similarity(cells[0][:, :, None], cells[1][:, None], dim=-1)  # (P, 16 query, 16 neighbour)
    assert found.query_best.shape == found.neighbor_best.shape == (4, 4, 4)
    np.testing.assert_allclose(found.query_best.reshape(4, 16), cosine.amax(2).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(found.neighbor_best.reshape(4, 16), cosine.amax(1).numpy(), rtol=0, atol=1e-5)


def test_per_class_bars_are_the_protocols_probes_and_are_cached(card_data, tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "default_cache_dir", lambda: tmp_path)
    fresh = CardData(card_data.encoder, **SMALL)
    summary = fresh.summary
    probed = zoo.evaluate(card_data.encoder, card_data.train, card_data.test, knn=False)
    for key in ("knn200", "linear"):  # a balanced test set: the mean of the per-class accuracies is the accuracy
        assert summary[key].shape == (10,) and np.mean(summary[key]) == pytest.approx(probed[key], abs=1e-9)
    assert summary["map"].shape == (100, 2) and np.bincount(summary["map_labels"]).tolist() == [10] * 10
    monkeypatch.setattr(CardData, "_summary", lambda self: pytest.fail("the summary was computed again"))
    again = CardData(card_data.encoder, **SMALL).summary
    assert all(np.array_equal(summary[k], again[k]) for k in summary)


def test_card_on_a_local_folder_links_each_figure_and_leaves_the_model_alone(model_dir, small_figures, tmp_path,
                                                                            capsys):
    pinned = {name: _sha256(model_dir / name) for name in ("config.json", "model.safetensors")}
    out = tmp_path / "card" / "elsewhere"  # created
    assert main(["card", str(model_dir), "--out", str(out)]) == 0
    assert "README.md" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURES, "README.md"])
    assert main(["card", str(model_dir)]) == 0  # in place, beside the weights
    for folder in (out, model_dir):
        card = (folder / "README.md").read_text()
        assert "## Figures" in card and card.index("## Results") < card.index("## Figures") < card.index("## Training")
        for name in FIGURES:
            assert f"]({name})" in card and (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {name: _sha256(model_dir / name) for name in pinned} == pinned
    assert not list(model_dir.glob(".*.tmp"))  # atomic writes leave nothing behind
    # an --out that cannot be a folder: one line that says what to do, nothing computed
    assert main(["card", str(model_dir), "--out", str(model_dir / "config.json" / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the folder" in err[0] and "--out" in err[0]


def test_publish_with_figures_ships_them_and_the_card_shows_them(model_dir, small_figures):
    files = publish.repo_files(model_dir, "tester/tiny", figures=True)
    card = files["README.md"].decode()
    for name in FIGURES:
        assert files[name][:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in card
    plain = publish.repo_files(model_dir, "tester/tiny")
    assert not set(FIGURES) & set(plain) and "## Figures" not in plain["README.md"].decode()


def test_compare_prints_one_table_and_writes_one_figure(model_dir, small_figures, tmp_path, capsys):
    out = tmp_path / "compare.png"
    assert main(["compare", str(model_dir), f"local-dir:{model_dir}", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for text in ("k-NN (k=5)", "weighted k-NN (k=200, T=0.1)", "25.00 %", "30.00 %", "  airplane", "  truck",
                 "training compute", "Protocol", "bank 200 / test 100 images"):
        assert text in table, text
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width == 1000 and out.stat().st_size < 300_000


def test_compare_refuses_an_unknown_model_or_an_unwritable_out_in_one_line(tmp_path, capsys):
    out = tmp_path / "compare.png"
    assert main(["compare", "simclr-cifar10", "no-such-model", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'no-such-model'" in err[0] and "Known: " in err[0]
    assert main(["compare", "simclr-cifar10", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder" in err[0]
    assert not out.exists()


def test_a_re_rendered_card_keeps_the_sections_other_commands_added(tmp_path):
    from zoo.hub.publish import _keep_added_sections

    old = tmp_path / "README.md"
    old.write_text("# m\n\n<!-- ssl-zoo:int8 -->\n## int8 ONNX\n\n| int8 | 50.00 % |\n<!-- /ssl-zoo:int8 -->\n\n"
                   "## Limitations\n\n- a\n")
    card = _keep_added_sections(b"# m\n\n## Results\n\nnew\n\n## Limitations\n\n- a\n", old).decode()
    assert card.count("## int8 ONNX") == 1 and "| int8 | 50.00 % |" in card and "new" in card
    assert card.index("## Results") < card.index("## int8 ONNX") < card.index("## Limitations")
    assert _keep_added_sections(b"card", tmp_path / "none.md") == b"card"  # nothing to keep
