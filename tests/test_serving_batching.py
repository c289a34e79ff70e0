"""When the server's batching loop starts a batch, and the transport that brings responses back."""

import asyncio
import os
import pickle
import stat
import threading
import time
from queue import Queue
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi import HTTPException

from serving.batching import GapBatchingLoop
from serving.ipc_transport import HTTPError, IpcTransport
from serving.litserve_compat import SENTINEL, LitAPIStatus, LoopResponseType, StopLoop


def _api(max_batch_size=16, batch_timeout=0.5, request_timeout=-1):
    return SimpleNamespace(max_batch_size=max_batch_size, batch_timeout=batch_timeout, request_timeout=request_timeout)


def _item(i, timestamp=None):
    return (0, f"uid{i}", time.monotonic() if timestamp is None else timestamp, {"i": i})


def _feed(queue, items, every):
    def run():
        for item in items:
            queue.put(item)
            time.sleep(every)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _collect(loop, api, queue):
    start = time.monotonic()
    batch, timed_out = loop.get_batch_requests(api, queue, transport=None)
    return [p[2]["i"] for p in batch], timed_out, time.monotonic() - start


def test_a_lone_request_starts_at_once():
    queue = Queue()
    queue.put(_item(0))
    got, _, seconds = _collect(GapBatchingLoop(gap=0.5), _api(batch_timeout=5.0), queue)
    assert got == [0]
    assert seconds < 0.25  # neither the gap nor the timeout


def test_a_burst_fills_the_batch_and_leaves_the_rest_queued():
    queue = Queue()
    for i in range(20):
        queue.put(_item(i))
    loop, api = GapBatchingLoop(gap=0.05), _api(max_batch_size=16)
    assert _collect(loop, api, queue)[0] == list(range(16))
    assert _collect(loop, api, queue)[0] == list(range(16, 20))


def test_requests_closer_than_the_gap_join_until_the_timeout():
    queue = Queue()
    queue.put(_item(0))  # a request already waiting behind the first: the batch gathers
    feeder = _feed(queue, [_item(i) for i in range(1, 40)], every=0.02)
    got, _, seconds = _collect(GapBatchingLoop(gap=0.2), _api(max_batch_size=64, batch_timeout=0.3), queue)
    feeder.join()
    assert 5 <= len(got) < 40 and got == list(range(len(got)))  # stopped by the timeout, in arrival order
    assert seconds < 0.6


def test_a_quiet_gap_ends_the_batch():
    queue = Queue()
    queue.put(_item(0))
    queue.put(_item(1))
    late = threading.Timer(0.3, queue.put, [_item(2)])
    late.start()
    got, _, _ = _collect(GapBatchingLoop(gap=0.1), _api(batch_timeout=5.0), queue)
    late.join()
    assert got == [0, 1]


def test_an_idle_queue_gives_an_empty_batch_and_shutdown_stops_the_loop():
    queue = Queue()
    loop, api = GapBatchingLoop(gap=0.01), _api()
    assert _collect(loop, api, queue)[:2] == ([], [])
    queue.put(SENTINEL)
    with pytest.raises(StopLoop):
        loop.get_batch_requests(api, queue, transport=None)


def test_requests_older_than_the_request_timeout_are_dropped():
    """The HTTP process has answered them 504 already; the worker does not spend a batch slot on them."""
    queue = Queue()
    queue.put(_item(0, timestamp=time.monotonic() - 10))
    queue.put(_item(1))
    got, timed_out, _ = _collect(GapBatchingLoop(gap=0.01), _api(request_timeout=5), queue)
    assert got == [1] and timed_out == []


def test_a_non_positive_gap_is_refused():
    with pytest.raises(ValueError, match="batch gap"):
        GapBatchingLoop(gap=0)


def _response(data, status=LitAPIStatus.OK):
    return ("uid-1", (data, status, LoopResponseType.REGULAR, 0))


def test_the_transport_delivers_what_a_worker_sends_before_the_http_process_listens():
    """LitServe's PUB socket dropped responses sent before its subscriber connected; PUSH queues them."""
    transport = IpcTransport.create()
    worker = pickle.loads(pickle.dumps(transport))  # what an inference worker process receives
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    try:
        assert stat.S_IMODE(os.stat(transport.directory).st_mode) == 0o700
        worker.send(("uid-0", ((), LitAPIStatus.START, LoopResponseType.REGULAR, 0)), consumer_id=0)  # not sent
        worker.send(_response(features), consumer_id=0)  # nobody listens yet
        worker.send(_response(HTTPException(504, "timed out"), LitAPIStatus.ERROR), consumer_id=0)
        worker.send(_response(pickle.dumps(RuntimeError("boom")), LitAPIStatus.ERROR), consumer_id=0)

        async def receive(n):
            return [await transport.areceive(consumer_id=0, timeout=10) for _ in range(n)]

        (uid, (got, status, *_)), *errors = asyncio.run(receive(3))
        assert uid == "uid-1" and status == LitAPIStatus.OK and np.array_equal(got, features)
        assert [(e.status, str(e), s) for _, (e, s, *_) in errors] == [(504, "timed out", LitAPIStatus.ERROR),
                                                                       (500, "boom", LitAPIStatus.ERROR)]
        assert all(isinstance(e, HTTPError) for _, (e, *_) in errors)
    finally:
        worker.close()
        transport.close()
    assert not os.path.exists(transport.directory)  # removed by the process that created it


def test_a_copy_of_the_transport_does_not_remove_the_directory():
    transport = IpcTransport.create()
    try:
        pickle.loads(pickle.dumps(transport)).close()
        assert os.path.isdir(transport.directory)
    finally:
        transport.close()
