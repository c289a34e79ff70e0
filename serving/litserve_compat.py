"""Every use of LitServe's internals, in one place, for the one LitServe release it was written against.

LitServe gives the server its process model (HTTP processes forked, inference workers spawned, a
monitor that restarts a dead worker), ``/health`` and ``/info``, route specs, the auth hook and the
batched loop that ``batching.GapBatchingLoop`` extends. What its public API does not cover:

1. ``EmbeddingLitServer._init_manager`` installs ``ipc_transport.IpcTransport`` for responses.
   LitServe's ``fast_queue=True`` is silently ignored and its ZeroMQ wiring swaps the broker's
   addresses (Lightning-AI/LitServe#751, fix in #752, unreleased); its ZeroMQ sockets are created in
   /tmp with the umask's permissions and never removed, carry pickles, and its PUB socket drops
   responses sent before a fixed 100 ms "wait for subscribers" has let the subscription through.
2. ``request_shutdown`` sets the server's shutdown event, as LitServe's own ``/shutdown`` route does.
   On Ctrl-C LitServe 0.2.19 catches KeyboardInterrupt without setting it, so the worker monitor
   (``restart_workers=True``, Lightning-AI/LitServe#624) sees the workers it is terminating die and
   starts new ones mid-shutdown; every process also printed a KeyboardInterrupt traceback.
3. ``SENTINEL`` and ``StopLoop``: the message that stops a worker's loop and the exception a loop
   raises on it, which ``GapBatchingLoop.get_batch_requests`` must honour.
4. ``ResponseBufferItem``, ``LitAPIStatus``, ``LoopResponseType`` and ``MessageTransport``: how a spec
   route hands a request to the workers and waits for its answer (what LitServe's OpenAISpec does).
5. ``LitSpec`` and ``BatchedLoop``: the base classes of this server's routes and batching loop, which
   LitServe exports only from its sub-modules.
6. ``any_worker_ready``: the workers' start-up states (``workers_setup_status``, shared through the
   multiprocessing manager), so a route can answer 503 at once while no worker can take a request.
7. ``EmbeddingLitServer._register_internal_endpoints`` drops LitServe's ``GET /`` ("litserve running"),
   registered before the routes' own, so that ``/`` is this server's page.

The transport itself is this project's (``ipc_transport``): the server is given it, the compat layer
only installs it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import litserve as ls
from litserve import LitAPI
from litserve.loops import BatchedLoop
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.specs.base import LitSpec
from litserve.transport.base import MessageTransport
from litserve.utils import (
    LitAPIStatus,
    LoopResponseType,
    ResponseBufferItem,
    WorkerSetupStatus,
)

SUPPORTED_VERSION = "0.2.19"
if ls.__version__ != SUPPORTED_VERSION:
    raise ImportError(f"ssl-zoo's server is written against litserve=={SUPPORTED_VERSION} (installed: "
                      f"{ls.__version__}); the internals listed in serving/litserve_compat.py change between "
                      f"releases: pip install 'litserve=={SUPPORTED_VERSION}'")

SENTINEL = _SENTINEL_VALUE
StopLoop = _StopLoopError

__all__ = ["SENTINEL", "BatchedLoop", "EmbeddingLitServer", "LitAPI", "LitAPIStatus", "LitSpec", "LoopResponseType",
           "MessageTransport", "ResponseBufferItem", "StopLoop", "any_worker_ready", "request_shutdown"]


class EmbeddingLitServer(ls.LitServer):
    """A LitServer whose responses travel over the transport ``make_transport()`` returns (item 1 above),
    whose inference workers ignore Ctrl-C and whose multiprocessing manager outlives a signal sent to the
    whole process group (Ctrl-C, or systemd's SIGTERM): the main process stops them, the manager last."""

    def __init__(self, *args, make_transport: Callable[[], MessageTransport], **kwargs) -> None:
        self._make_transport = make_transport
        super().__init__(*args, **kwargs)

    def launch_inference_worker(self, lit_api: ls.LitAPI) -> list:
        """LitServe's worker start, with SIGINT ignored in the workers."""
        # A spawned worker inherits an ignored SIGINT through exec, and Python then leaves it ignored; a
        # worker still importing torch would otherwise print a KeyboardInterrupt traceback.
        with _ignoring(signal.SIGINT):
            return super().launch_inference_worker(lit_api)

    def _register_internal_endpoints(self) -> None:
        """LitServe's own routes (/ready, /info, shutdown) without its ``GET /`` (item 7 above)."""
        super()._register_internal_endpoints()
        self.app.router.routes[:] = [r for r in self.app.router.routes if getattr(r, "path", None) != "/"]

    def verify_worker_status(self) -> None:
        """Wait for a worker to be ready; if one failed, remove the transport's directory before LitServe raises."""
        try:
            super().verify_worker_status()
        except RuntimeError:  # LitServe raises before its shutdown path: remove the transport's directory here
            self._transport.close()
            raise

    def _init_manager(self, num_api_servers: int):
        """LitServe's queues and manager (started ignoring group signals), then this server's transport."""
        with _ignoring(signal.SIGINT, signal.SIGTERM):  # inherited by the forked manager process
            manager = super()._init_manager(num_api_servers)  # also builds an unused multiprocessing transport
        self._transport = self._make_transport()
        return manager


def any_worker_ready(server: ls.LitServer) -> bool:
    """Whether at least one inference worker has finished its set-up and not died since (item 6 above)."""
    return any(state == WorkerSetupStatus.READY for state in server.workers_setup_status.values())


def request_shutdown(server: ls.LitServer) -> None:
    """Ask a running server to stop (item 2 above), from a signal handler; before ``run`` has set up its
    processes there is nothing to stop yet, and this raises KeyboardInterrupt."""
    if server._shutdown_event is None:
        raise KeyboardInterrupt
    # The event is a multiprocessing.Manager proxy whose connection the interrupted main thread may be
    # using (it waits on this very event), so set it from a thread of its own.
    threading.Thread(target=server._shutdown_event.set, daemon=True).start()


@contextmanager
def _ignoring(*signals: signal.Signals) -> Iterator[None]:
    """Ignore ``signals`` in this process, and in the processes it starts meanwhile."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
