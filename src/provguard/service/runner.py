"""Serve an ASGI app with uvicorn on loopback in a background thread (tests, load bench)."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from provguard.service.errors import ServiceError

__all__ = ["ThreadedServer"]


class ThreadedServer:
    """``app`` served on ``127.0.0.1:port`` (0: a free port) in a daemon thread; ``url`` is set
    by :meth:`start`. Access log off (request lines may carry keys). Raises
    :class:`ServiceError` if the server does not start within ``timeout`` seconds."""

    def __init__(self, app: Any, *, port: int = 0, timeout: float = 15.0) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._timeout = timeout
        self.url = ""

    def start(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServiceError("the HTTP server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(self._timeout)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
