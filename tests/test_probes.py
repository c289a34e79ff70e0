import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import needs_cifar10
from zoo import build_encoder, evaluate, extract_features, knn_probe, linear_probe
from zoo.data import to_float_nchw


class TupleModel(nn.Module):
    """Returns (representation, projection), like the seed's SSL models."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.feature_dim, 4)

    def forward(self, x):
        h = self.encoder(x)
        return h, self.head(h)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder({"architecture": "resnet18_cifar", "kwargs": {"width": 8}})


@pytest.fixture(scope="module")
def small_splits(cifar10_train, cifar10_test):
    """300 train / 100 test real CIFAR-10 images (balanced)."""
    return cifar10_train.per_class(30), cifar10_test.per_class(10)


def test_extract_features_accepts_every_input_form(encoder, rng):
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    a = extract_features(encoder, images, batch_size=4)
    b = extract_features(encoder, floats, batch_size=3)
    c = extract_features(encoder, DataLoader(TensorDataset(floats, torch.zeros(10)), batch_size=5))
    d = extract_features(TupleModel(encoder), floats)
    assert a.shape == (10, 64) and a.dtype == torch.float32
    for other in (b, c, d):
        torch.testing.assert_close(a, other)
    normed = extract_features(encoder, images, normalize=True)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(10))
    with pytest.raises(ValueError, match="empty"):
        extract_features(encoder, images[:0])
    with pytest.raises(TypeError, match="unsupported data"):
        extract_features(encoder, 42)


def test_extract_features_is_frozen_and_restores_mode(encoder, rng):
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    feats = extract_features(encoder, images)
    assert encoder.training  # restored
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # BN stats untouched
    assert not feats.requires_grad
    encoder.eval()
    extract_features(encoder, images)
    assert not encoder.training


def test_batch_stats_features_are_a_train_mode_forward_that_leaves_the_model_alone(encoder, rng):
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    batch_stats = extract_features(encoder, images, batch_size=4, batch_norm="batch-stats")
    notebook = copy.deepcopy(encoder).train()  # what the notebook runs: the model left in train mode
    with torch.no_grad():
        expected = torch.cat([notebook(to_float_nchw(images[i:i + 4])) for i in range(0, 12, 4)])
    torch.testing.assert_close(batch_stats, expected)
    assert not torch.allclose(batch_stats, extract_features(encoder, images, batch_size=4), atol=1e-3)
    assert not torch.allclose(batch_stats, extract_features(encoder, images, batch_size=6, batch_norm="batch-stats"),
                              atol=1e-3)  # each feature depends on its batch
    assert encoder.training  # restored, and running statistics and batch counters untouched
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert all(m.track_running_stats for m in encoder.modules() if isinstance(m, nn.BatchNorm2d))
    encoder.eval()
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        extract_features(encoder, images, batch_norm="train")


@needs_cifar10
@pytest.mark.parametrize("normalize", [False, True])
def test_knn_matches_sklearn_on_real_features(small_features, normalize):
    tx, ty, vx, vy = small_features
    if normalize:
        tx, vx = (F.normalize(torch.from_numpy(x), dim=1).numpy() for x in (tx, vx))
    expected = KNeighborsClassifier(n_neighbors=5).fit(tx, ty).predict(vx)
    result = knn_probe(*small_features, k=5, chunk_size=97, normalize=normalize)
    assert np.array_equal(result.predictions, expected)
    assert result.accuracy == pytest.approx((expected == vy).mean())
    assert result.accuracy > 0.15  # random-init CIFAR features beat chance (0.10)
    assert result.protocol["features_normalized"] is normalize


def test_knn_vote_ties_go_to_the_smallest_label_as_in_sklearn(rng):
    tx, ty = rng.normal(size=(600, 32)).astype(np.float32), rng.integers(0, 3, 600)
    vx, vy = rng.normal(size=(300, 32)).astype(np.float32), rng.integers(0, 3, 300)
    _, nearest2 = KNeighborsClassifier(n_neighbors=2).fit(tx, ty).kneighbors(vx)
    assert (ty[nearest2[:, 0]] != ty[nearest2[:, 1]]).sum() > 50  # k=2: many tied votes
    for k in (2, 4, 6):
        expected = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(tx, ty).predict(vx)
        assert np.array_equal(knn_probe(tx, ty, vx, vy, k=k, chunk_size=64).predictions, expected)


def _nearest_reference(tx, ty, vx, k, num_classes):
    """float64 distances, equidistant rows in index order, majority vote ties to the smallest label."""
    d = ((vx[:, None].astype(np.float64) - tx[None]) ** 2).sum(-1)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.array([np.bincount(ty[row], minlength=num_classes).argmax() for row in nearest])


def test_equidistant_neighbours_are_the_lowest_indices(rng):
    # Binary features and duplicated rows: dozens of train rows tie at the k-th distance, far more
    # than the first shortlist. (sklearn's choice among exactly equidistant rows depends on its
    # heap and thread chunking; ours is the lowest indices.)
    tx = rng.integers(0, 2, (3000, 16)).astype(np.float32)
    tx[1000:2000] = tx[:1000]
    ty = rng.integers(0, 4, 3000)
    vx = np.concatenate([rng.integers(0, 2, (150, 16)).astype(np.float32), tx[:50]])
    vy = rng.integers(0, 4, 200)
    for k in (1, 5, 40):
        result = knn_probe(tx, ty, vx, vy, k=k, chunk_size=37)
        assert np.array_equal(result.predictions, _nearest_reference(tx, ty, vx, k, 4))


def test_knn_is_exact_where_float32_scores_cancel(rng):
    # Features far from the origin: |t|^2 - 2 q.t loses every significant digit of the distances
    # in float32, so no row's float32 top-k can be trusted and all are decided in float64.
    tx = (1000 + 0.01 * rng.normal(size=(400, 64))).astype(np.float32)
    vx = (1000 + 0.01 * rng.normal(size=(60, 64))).astype(np.float32)
    ty, vy = rng.integers(0, 3, 400), rng.integers(0, 3, 60)
    expected = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(tx, ty).predict(vx)
    result = knn_probe(tx, ty, vx, vy, k=5)
    assert np.array_equal(result.predictions, expected)
    assert np.array_equal(result.predictions, _nearest_reference(tx, ty, vx, 5, 3))


def _weighted_knn_reference(tx, ty, vx, k, t, num_classes):
    tx = tx / np.linalg.norm(tx, axis=1, keepdims=True)
    vx = vx / np.linalg.norm(vx, axis=1, keepdims=True)
    preds = []
    for q in vx:
        sim = tx @ q
        nn_idx = np.argsort(-sim)[:k]
        scores = np.zeros(num_classes)
        for i in nn_idx:
            scores[ty[i]] += np.exp(sim[i] / t)
        preds.append(scores.argmax())
    return np.array(preds)


def test_weighted_knn_matches_direct_formula(rng):
    # 3000 rows: more blocks than k, so the two-stage top-k runs
    tx, vx = rng.normal(size=(3000, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    ty, vy = rng.integers(0, 5, 3000), rng.integers(0, 5, 40)
    result = knn_probe(tx, ty, vx, vy, k=50, weighted=True, chunk_size=7)  # default temperature: 0.1
    assert np.array_equal(result.predictions, _weighted_knn_reference(tx, ty, vx, 50, 0.1, 5))
    assert result.protocol.items() >= {"probe": "knn", "k": 50, "weighted": True, "distance": "cosine",
                                       "features_normalized": True, "temperature": 0.1}.items()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        knn_probe(tx, ty, vx, vy, k=5, weighted=True, temperature=0)


def test_per_class_accuracy_and_absent_classes():
    tx = np.array([[0.0], [1.0], [10.0], [11.0]], dtype=np.float32)
    ty = np.array([0, 0, 1, 1])
    vx = np.array([[0.5], [10.5], [0.2]], dtype=np.float32)
    vy = np.array([0, 0, 2])  # the second point is really a 1; class 2 never appears in train
    r = knn_probe(tx, ty, vx, vy, k=1)
    assert r.predictions.tolist() == [0, 1, 0]
    assert r.accuracy == pytest.approx(1 / 3)
    assert r.per_class_accuracy[0] == pytest.approx(0.5) and r.per_class_accuracy[2] == 0
    assert np.isnan(r.per_class_accuracy[1])  # no test samples of class 1


@pytest.mark.parametrize("probe", [knn_probe, linear_probe])
def test_bad_probe_inputs_are_clear(probe, rng):
    tx, ty = rng.normal(size=(8, 4)), rng.integers(0, 2, 8)
    with pytest.raises(ValueError, match="differ in length"):
        probe(tx, ty[:5], tx, ty)
    with pytest.raises(ValueError, match="empty"):
        probe(tx[:0], ty[:0], tx, ty)
    with pytest.raises(ValueError, match="dimension"):
        probe(tx, ty, tx[:, :3], ty)
    with pytest.raises(ValueError, match="2-D"):
        probe(tx[:, 0], ty, tx, ty)
    bad = tx.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="test_features holds NaN"):
        probe(tx, ty, bad, ty)


def test_k_larger_than_train_set(rng):
    tx, ty = rng.normal(size=(8, 4)), rng.integers(0, 2, 8)
    with pytest.raises(ValueError, match="k=9 must be between 1 and the number of training samples \\(8\\)"):
        knn_probe(tx, ty, tx, ty, k=9)


@needs_cifar10
@pytest.mark.parametrize("normalize", [False, True])
def test_fast_linear_probe_agrees_with_sklearn(small_features, normalize):
    tx, ty, vx, vy = small_features
    fast = linear_probe(tx, ty, vx, vy, solver="fast", normalize=normalize)
    sk = linear_probe(tx, ty, vx, vy, solver="sklearn", normalize=normalize)
    if normalize:  # the notebook's code on the same features (once: sklearn is slow on raw ones)
        tx, vx = (F.normalize(torch.from_numpy(x), dim=1).numpy() for x in (tx, vx))
        assert np.array_equal(sk.predictions, LogisticRegression(max_iter=1000).fit(tx, ty).predict(vx))
    assert abs(fast.accuracy - sk.accuracy) <= 0.003  # 0.3 points
    assert (fast.predictions == sk.predictions).mean() >= 0.97
    assert fast.accuracy > 0.2
    assert fast.protocol["features_normalized"] is normalize and fast.protocol["solver"] == "fast"
    with pytest.raises(ValueError, match="solver"):
        linear_probe(tx, ty, vx, vy, solver="adam")
    with pytest.raises(ValueError, match="C must be > 0"):
        linear_probe(tx, ty, vx, vy, C=0)


@needs_cifar10
def test_evaluate_states_the_full_protocol_of_every_number(encoder, small_splits):
    bank, test = small_splits
    out = evaluate(encoder, bank, test)
    protocol = out["protocol"]
    assert set(protocol) == {"knn5", "knn200", "linear"} and all(0 <= out[key] <= 1 for key in protocol)
    for p in protocol.values():
        assert p["train_images"] == 300 and p["test_images"] == 100 and p["batch_norm"] == "eval"
        assert p["features_normalized"] is True and p["implementation"]
    assert protocol["knn5"].items() >= {"probe": "knn", "k": 5, "weighted": False, "distance": "euclidean"}.items()
    assert protocol["knn200"].items() >= {"k": 200, "weighted": True, "temperature": 0.1, "distance": "cosine"}.items()
    assert protocol["linear"].items() >= {"probe": "linear", "solver": "fast", "C": 1.0, "tol": 1e-4}.items()
    assert "sklearn" in evaluate(encoder, bank, test, knn=False, weighted_knn=False,
                                 solver="sklearn")["protocol"]["linear"]["implementation"]
    with pytest.raises(ValueError, match="solver must be one of"):
        evaluate(encoder, bank, test, solver="newton")


@needs_cifar10
def test_normalised_and_raw_protocols_probe_what_they_say(encoder, small_splits):
    bank, test = small_splits
    tx, vx = extract_features(encoder, bank), extract_features(encoder, test)
    normed = evaluate(encoder, bank, test, weighted_knn=False)
    raw = evaluate(encoder, bank, test, weighted_knn=False, normalize=False)
    for out, (a, b) in ((normed, (F.normalize(tx, dim=1), F.normalize(vx, dim=1))), (raw, (tx, vx))):
        assert out["knn5"] == knn_probe(a, bank.labels, b, test.labels, k=5).accuracy
        assert out["linear"] == linear_probe(a, bank.labels, b, test.labels).accuracy
    assert (normed["knn5"], normed["linear"]) != (raw["knn5"], raw["linear"])
    assert raw["protocol"]["knn5"]["features_normalized"] is False
    assert raw["protocol"]["linear"]["features_normalized"] is False


@needs_cifar10
def test_batch_stats_protocol_is_the_notebooks_loaders(encoder, small_splits):
    bank, test = small_splits
    out = evaluate(encoder, bank, test, weighted_knn=False, linear=False, batch_norm="batch-stats", seed=3)
    assert out["protocol"]["knn5"].items() >= {"batch_norm": "batch-stats", "batch_size": 256,
                                               "shuffle_seed": 3}.items()
    # the notebook: the model in train mode, shuffled batches of 256 (our class-sorted test split too)
    shuffle = torch.Generator().manual_seed(3)
    orders = [torch.randperm(len(split), generator=shuffle).numpy() for split in (bank, test)]
    notebook = copy.deepcopy(encoder).train()
    with torch.no_grad():
        tx, vx = (torch.cat([notebook(to_float_nchw(split.images[order[i:i + 256]]))
                             for i in range(0, len(split), 256)]) for split, order in zip((bank, test), orders))
    expected = knn_probe(tx, bank.labels[orders[0]], vx, test.labels[orders[1]], k=5, normalize=True).accuracy
    assert out["knn5"] == expected
