import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import needs_cifar10
from zoo import build_encoder, extract_features, knn_probe, linear_probe


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


@needs_cifar10
def test_knn_matches_sklearn_on_real_features(small_features):
    tx, ty, vx, vy = small_features
    expected = KNeighborsClassifier(n_neighbors=5).fit(tx, ty).predict(vx)
    result = knn_probe(tx, ty, vx, vy, k=5, chunk_size=97)
    assert np.array_equal(result.predictions, expected)
    assert result.accuracy == pytest.approx((expected == vy).mean())
    assert result.accuracy > 0.15  # random-init CIFAR features beat chance (0.10)


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
    tx, vx = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    ty, vy = rng.integers(0, 5, 300), rng.integers(0, 5, 40)
    result = knn_probe(tx, ty, vx, vy, k=50, weighted=True, temperature=0.1, chunk_size=7)
    assert np.array_equal(result.predictions, _weighted_knn_reference(tx, ty, vx, 50, 0.1, 5))
    assert result.protocol == {"probe": "knn", "k": 50, "weighted": True, "distance": "cosine",
                               "features_normalized": True, "temperature": 0.1}


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


def test_k_larger_than_train_set(rng):
    tx, ty = rng.normal(size=(8, 4)), rng.integers(0, 2, 8)
    with pytest.raises(ValueError, match="k=9 must be between 1 and the number of training samples \\(8\\)"):
        knn_probe(tx, ty, tx, ty, k=9)


@needs_cifar10
def test_fast_linear_probe_agrees_with_sklearn(small_features):
    tx, ty, vx, vy = small_features
    fast = linear_probe(tx, ty, vx, vy, solver="fast")
    sk = linear_probe(tx, ty, vx, vy, solver="sklearn")
    reference = LogisticRegression(max_iter=1000).fit(tx, ty).predict(vx)
    assert np.array_equal(sk.predictions, reference)  # the seed's path, unchanged
    assert abs(fast.accuracy - sk.accuracy) <= 0.02
    assert (fast.predictions == sk.predictions).mean() >= 0.9
    assert fast.accuracy > 0.2
    with pytest.raises(ValueError, match="solver"):
        linear_probe(tx, ty, vx, vy, solver="adam")
