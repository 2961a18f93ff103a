"""Run an ASGI app on loopback in a background thread (uvicorn), for the sandbox and the tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from provguard.errors import ProvguardError


class LoopbackServer:
    """An ASGI app served by uvicorn on ``127.0.0.1`` (port 0: the OS picks a free one).

    Uvicorn's access log is off: request lines carry codes and, for WeChat's GET token endpoint,
    the app secret, which must not reach a log. ``url`` is ``http://127.0.0.1:<port>`` once
    :meth:`start` returned. Raises :class:`ProvguardError` when the server does not start in
    ``timeout`` seconds.
    """

    def __init__(self, app: Any, *, port: int = 0, timeout: float = 10.0) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._timeout = timeout
        self.url = ""

    def start(self) -> LoopbackServer:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ProvguardError("loopback server did not start")
            time.sleep(0.01)
        sock = self._server.servers[0].sockets[0]
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=self._timeout)


@contextmanager
def serve(app: Any) -> Iterator[LoopbackServer]:
    """``with serve(app) as server: ... server.url ...`` — started, then stopped on exit."""
    server = LoopbackServer(app).start()
    try:
        yield server
    finally:
        server.stop()
