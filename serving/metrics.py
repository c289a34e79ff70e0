"""Prometheus metrics of the server, through ``prometheus-client`` in its multi-process mode.

The HTTP processes and the inference workers each write their samples to files in one private folder
(``PROMETHEUS_MULTIPROC_DIR``, made by the server at start and removed at stop); ``GET /metrics`` sums
them. Besides requests, latencies, batches and the queue, it watches the embeddings themselves: their
norm before normalisation (per model) and, with an index, each query's top-1 similarity to the
collection. A shift in the incoming images moves both distributions: that is drift on a dashboard.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import cache
from types import SimpleNamespace

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
NORM_BUCKETS = (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
SIMILARITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(-4, 21))  # cosine, -0.2 to 1.0


def start() -> str:
    """Make the private folder every process of this server writes its samples to (before any starts)."""
    folder = tempfile.mkdtemp(prefix="ssl-zoo-metrics-")
    os.environ[ENV] = folder
    return folder


def stop(folder: str) -> None:
    """Remove the samples' folder (the server has stopped)."""
    shutil.rmtree(folder, ignore_errors=True)


@cache
def metrics() -> SimpleNamespace:
    """The server's metrics, made once per process (after ``start`` set the folder in the environment)."""
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        requests=Counter("ssl_zoo_requests", "HTTP requests answered", ["route", "status"]),
        latency=Histogram("ssl_zoo_request_seconds", "time from a request's arrival to its answer", ["route"],
                          buckets=LATENCY_BUCKETS),
        decode=Histogram("ssl_zoo_decode_seconds", "time to decode one request's images", buckets=LATENCY_BUCKETS),
        queue_wait=Histogram("ssl_zoo_queue_wait_seconds", "time a request waited for an inference worker",
                             buckets=LATENCY_BUCKETS),
        model=Histogram("ssl_zoo_model_seconds", "time of one batch in the model (preprocessing included)",
                        ["model"], buckets=LATENCY_BUCKETS),
        batch=Histogram("ssl_zoo_batch_size", "requests in one batch", buckets=BATCH_BUCKETS),
        queue_depth=Gauge("ssl_zoo_queue_depth", "requests waiting for an inference worker", multiprocess_mode="max"),
        decode_failures=Counter("ssl_zoo_decode_failures", "images refused", ["reason"]),
        info=Gauge("ssl_zoo_model_info", "the models served (value 1)",
                   ["model", "tag", "revision", "sha256", "backend"], multiprocess_mode="max"),
        norm=Histogram("ssl_zoo_embedding_norm", "L2 norm of each embedding before any normalisation", ["model"],
                       buckets=NORM_BUCKETS),
        top1=Histogram("ssl_zoo_search_top1_similarity", "cosine similarity of each /search query's nearest row",
                       ["model"], buckets=SIMILARITY_BUCKETS),
    )


def exposition() -> tuple[bytes, str]:
    """Every process's samples, summed: the body and content type of ``GET /metrics``."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
