"""A LitServe batching loop that starts a batch as soon as requests stop arriving.

LitServe's own loop always waits ``batch_timeout`` for a batch to fill, so a timeout long enough to
gather a burst of 16 requests adds that wait to every lone request. This loop takes a request, then
keeps taking more while the next one arrives within ``gap`` seconds, until the batch is full or
``batch_timeout`` has passed since the first: a lone request waits ``gap``, a burst fills the batch.
At ``max_batch_size`` 1 each request is a batch of its own, started without waiting.

Requests that waited in the queue longer than the request timeout are dropped unanswered: the HTTP
process, whose deadline started earlier, has already answered them 504. (LitServe's loop answers them
again and logs an error naming a LitServe argument; it also sends a per-request "started" note that
only its worker monitor reads.)
"""

from __future__ import annotations

import time
from queue import Empty, Queue

from .litserve_compat import SENTINEL, BatchedLoop, LitAPI, MessageTransport, StopLoop


class GapBatchingLoop(BatchedLoop):
    """LitServe's batched loop with a quiet-gap rule for when to start the batch."""

    def __init__(self, gap: float) -> None:
        super().__init__()
        if gap <= 0:
            raise ValueError(f"batch gap must be > 0 seconds, got {gap}")
        self.gap = gap

    def get_batch_requests(self, lit_api: LitAPI, request_queue: Queue,
                           transport: MessageTransport) -> tuple[list, list]:
        """The next batch (requests in arrival order) and, always empty here, LitServe's timed-out list."""
        payloads: list = []
        deadline = None
        while len(payloads) < lit_api.max_batch_size:
            if deadline is None:
                wait = 1.0  # idle: block for the first request (and check for shutdown once a second)
            else:
                wait = min(self.gap, deadline - time.monotonic())
                if wait <= 0:
                    break
            try:
                item = request_queue.get(timeout=wait)
            except Empty:
                if deadline is None:
                    return [], []
                break
            if item == SENTINEL:
                raise StopLoop()
            response_queue_id, uid, timestamp, payload = item
            if deadline is None:
                deadline = time.monotonic() + lit_api.batch_timeout
            if lit_api.request_timeout in (-1, False) or time.monotonic() - timestamp <= lit_api.request_timeout:
                payloads.append((response_queue_id, uid, payload))
        return payloads, []
