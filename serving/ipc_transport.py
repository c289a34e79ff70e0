"""Responses from inference workers to HTTP processes over ZeroMQ PUSH/PULL sockets in a private directory.

Replaces LitServe's transports (see ``litserve_compat``): its ZeroMQ one routes every response
through a broker thread, over sockets created in /tmp with the umask's permissions (0755 here) and
never removed, carrying pickles, and after a fixed 100 ms "wait for subscribers" a PUB socket drops
what it sends before the subscription has arrived. Here each HTTP process binds one PULL socket
in a directory only this user can enter (``mkdtemp``: 0700), removed when the server stops; a
worker PUSHes straight to it. PUSH queues messages until its peer is connected, so no response
is dropped at start-up or after a worker restart and no handshake timing is needed. Messages are
raw frames (uid, status, dtype, shape, bytes), never pickles.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import shutil
import tempfile
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from .errors import HTTPError
from .litserve_compat import LitAPIStatus, LoopResponseType, MessageTransport

logger = logging.getLogger(__name__)
_OK, _ERROR = b"ok", b"error"


class IpcTransport(MessageTransport):
    """LitServe's ``MessageTransport`` for responses, over ipc sockets in a private directory."""

    def __init__(self, directory: str, owner_pid: int | None = None) -> None:
        self.directory, self._owner_pid = directory, owner_pid
        self._push: dict[int, zmq.Socket] = {}
        self._pull: zmq.asyncio.Socket | None = None
        self._context: zmq.Context | None = None

    @classmethod
    def create(cls) -> IpcTransport:
        """A transport with a new private directory, removed by ``close`` in this process."""
        return cls(tempfile.mkdtemp(prefix="ssl-zoo-ipc-"), os.getpid())

    def address(self, consumer_id: int) -> str:
        """The ipc address of HTTP process ``consumer_id``'s PULL socket."""
        return f"ipc://{self.directory}/responses-{consumer_id}"

    def send(self, item: tuple, consumer_id: int) -> None:
        """Send one ``(uid, (data, status, response_type, worker_id))`` response (in a worker)."""
        uid, (data, status, *_) = item
        if status == LitAPIStatus.START:  # LitServe's "a worker took it" note: unused here (see litserve_compat)
            return
        socket = self._push.get(consumer_id)
        if socket is None:
            self._context = self._context or zmq.Context()
            socket = self._push[consumer_id] = self._context.socket(zmq.PUSH)
            socket.connect(self.address(consumer_id))
        socket.send_multipart(_encode(str(uid), data, status), copy=False)

    async def areceive(self, consumer_id: int | None = None, timeout: float | None = None) -> tuple | None:
        """The next response for HTTP process ``consumer_id`` in LitServe's shape, or None for an unreadable one."""
        if self._pull is None:
            self._context = zmq.asyncio.Context()
            self._pull = self._context.socket(zmq.PULL)
            self._pull.bind(self.address(consumer_id or 0))
        receive = self._pull.recv_multipart()
        frames = await (asyncio.wait_for(receive, timeout) if timeout is not None else receive)
        try:
            return _decode(frames)
        except (ValueError, TypeError, UnicodeDecodeError) as e:  # never stop LitServe's receiving loop
            logger.error("dropped a malformed response from an inference worker: %s", e)
            return None

    def close(self, **kwargs: Any) -> None:
        """Close this process's sockets; in the process that created the directory, remove it."""
        for socket in [*self._push.values(), self._pull]:
            if socket is not None:
                socket.close(linger=0)
        self._push, self._pull = {}, None
        if os.getpid() == self._owner_pid:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __reduce__(self):
        return IpcTransport, (self.directory,)


def _encode(uid: str, data: Any, status: str) -> list:
    if status == LitAPIStatus.OK and isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
        return [uid.encode(), _OK, data.dtype.str.encode(), ",".join(map(str, data.shape)).encode(), data]
    if status == LitAPIStatus.OK:
        data = TypeError(f"the worker returned {type(data).__name__}, not an array")
    elif isinstance(data, bytes):  # LitServe pickles an exception before handing it over, in this same process
        try:
            data = pickle.loads(data)
        except Exception as e:  # an exception class that does not unpickle: report that much
            data = RuntimeError(f"an error that could not be read back ({e})")
    code = getattr(data, "status_code", 500)
    message = getattr(data, "detail", None) or str(data) or type(data).__name__
    return [uid.encode(), _ERROR, str(code).encode(), str(message).encode()]


def _decode(frames: list[bytes]) -> tuple:
    uid, kind, *rest = frames
    if kind == _OK:
        dtype, shape, buffer = rest
        array = np.frombuffer(buffer, dtype=np.dtype(dtype.decode())).reshape(
            [int(n) for n in shape.decode().split(",") if n])
        response = (array, LitAPIStatus.OK)
    elif kind == _ERROR:
        code, message = rest
        response = (HTTPError(int(code), message.decode()), LitAPIStatus.ERROR)
    else:
        raise ValueError(f"unknown response kind {kind!r}")
    return uid.decode(), (*response, LoopResponseType.REGULAR, None)
