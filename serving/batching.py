"""A LitServe batching loop that never makes a lone request wait.

LitServe's own loop always waits ``batch_timeout`` for a batch to fill, so a timeout long enough to
gather a burst of 16 requests adds that wait to every lone request. This loop takes a request and starts
its batch at once when nothing else is waiting: a lone client pays nothing for batching. When others are
already queued (the model was busy), it takes them all, then keeps taking more while the next one arrives
within ``gap`` seconds, until the batch is full or ``batch_timeout`` has passed since the first: under load
the batch fills from the queue that built up while the model ran the previous one.

Requests that waited in the queue longer than the request timeout are dropped unanswered: the HTTP
process, whose deadline started earlier, has already answered them 504. (LitServe's loop answers them
again and logs an error naming a LitServe argument; it also sends a per-request "started" note that
only its worker monitor reads.)
"""

from __future__ import annotations

import time
from queue import Empty, Queue

from .litserve_compat import SENTINEL, BatchedLoop, LitAPI, MessageTransport, StopLoop
from .metrics import metrics


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
            waited = time.monotonic() - timestamp  # CLOCK_MONOTONIC: one clock for every process on the machine
            metrics().queue_wait.observe(waited)
            if lit_api.request_timeout not in (-1, False) and waited > lit_api.request_timeout:
                continue  # answered 504 already
            payloads.append((response_queue_id, uid, payload))
            if deadline is None:
                if request_queue.empty():  # nothing else is waiting: no reason to make this one wait
                    break
                deadline = time.monotonic() + lit_api.batch_timeout
        return payloads, []
