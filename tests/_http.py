"""A local HTTP server for download tests: serves a directory on 127.0.0.1 at a random port.

Use as a context manager or through the ``http_server`` fixture (import it into the test module)::

    from ._http import http_server  # noqa: F401  (pytest fixture)

    def test_x(http_server):
        server = http_server(tmp_path)       # serves tmp_path
        url = server.url + "/file.txt"
        server.stop()                        # later requests fail: proves a cache hit is offline

``server.requests`` lists the paths asked for, so tests can check that nothing was downloaded.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        self.server.requests.append(self.path)
        super().do_GET()


class LocalServer:
    """Serve ``directory`` over HTTP from a daemon thread until :meth:`stop`."""

    def __init__(self, directory: str | Path):
        handler = functools.partial(_Handler, directory=str(directory))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.requests = []
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.running = True

    @property
    def requests(self) -> list[str]:
        return self._httpd.requests

    def stop(self) -> None:
        if self.running:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self.running = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture()
def http_server():
    """Factory fixture: ``http_server(directory) -> LocalServer``; every server is stopped at teardown."""
    servers: list[LocalServer] = []

    def start(directory):
        server = LocalServer(directory)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
