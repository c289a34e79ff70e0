"""When the server's batching loop starts a batch, and the ZeroMQ transport it relies on."""

import asyncio
import pickle
import threading
import time
from queue import Queue
from types import SimpleNamespace

import pytest
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.transport.factory import create_transport_from_config

from serving.api import build_server
from serving.batching import GapBatchingLoop


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


def test_a_lone_request_waits_only_the_gap():
    queue = Queue()
    queue.put(_item(0))
    got, _, seconds = _collect(GapBatchingLoop(gap=0.05), _api(batch_timeout=5.0), queue)
    assert got == [0]
    assert 0.05 <= seconds < 1.0  # the gap, far less than the 5 s timeout


def test_a_burst_fills_the_batch_and_leaves_the_rest_queued():
    queue = Queue()
    for i in range(20):
        queue.put(_item(i))
    loop, api = GapBatchingLoop(gap=0.05), _api(max_batch_size=16)
    assert _collect(loop, api, queue)[0] == list(range(16))
    assert _collect(loop, api, queue)[0] == list(range(16, 20))


def test_requests_closer_than_the_gap_join_until_the_timeout():
    queue = Queue()
    feeder = _feed(queue, [_item(i) for i in range(40)], every=0.02)
    got, _, seconds = _collect(GapBatchingLoop(gap=0.2), _api(max_batch_size=64, batch_timeout=0.3), queue)
    feeder.join()
    assert 5 <= len(got) < 40 and got == list(range(len(got)))  # stopped by the timeout, in arrival order
    assert seconds < 0.6


def test_a_quiet_gap_ends_the_batch():
    queue = Queue()
    feeder = _feed(queue, [_item(0), _item(1), _item(2)], every=0.3)
    got, _, _ = _collect(GapBatchingLoop(gap=0.1), _api(batch_timeout=5.0), queue)
    feeder.join()
    assert got == [0]


def test_an_idle_queue_gives_an_empty_batch_and_shutdown_stops_the_loop():
    queue = Queue()
    loop, api = GapBatchingLoop(gap=0.01), _api()
    assert _collect(loop, api, queue)[:2] == ([], [])
    queue.put(_SENTINEL_VALUE)
    with pytest.raises(_StopLoopError):
        loop.get_batch_requests(api, queue, transport=None)


def test_requests_older_than_the_request_timeout_are_answered_as_timed_out():
    queue = Queue()
    queue.put(_item(0, timestamp=time.monotonic() - 10))
    queue.put(_item(1))
    got, timed_out, _ = _collect(GapBatchingLoop(gap=0.01), _api(request_timeout=5), queue)
    assert got == [1] and timed_out == [(0, "uid0")]


def test_a_non_positive_gap_is_refused():
    with pytest.raises(ValueError, match="batch gap"):
        GapBatchingLoop(gap=0)


def test_the_server_uses_a_working_zeromq_transport(tmp_path):
    import torch

    import zoo
    
    config = zoo.EncoderConfig("resnet18_cifar", {"width": 4})
    torch.manual_seed(0)
    server = build_server(str(zoo.Encoder(config).save_pretrained(tmp_path)), accelerator="cpu")
    assert server.transport_config.transport_type == "zmq"
    create_transport_from_config(server.transport_config).close()  # the main process closes one it never used
    consumer = create_transport_from_config(server.transport_config)  # the HTTP process's end
    producer = pickle.loads(pickle.dumps(consumer))  # what an inference worker process receives

    async def round_trip():
        receive = asyncio.create_task(consumer.areceive(consumer_id=0, timeout=10))
        for _ in range(50):  # a PUB socket drops messages until its subscriber has connected
            await asyncio.sleep(0.05)
            producer.send(("uid", ("hello",)), consumer_id=0)
            if receive.done():
                break
        return await receive

    try:
        assert asyncio.run(round_trip()) == ("uid", ("hello",))
    finally:
        producer.close()
        consumer.close()
