"""Serve over HTTP on 127.0.0.1 (the demo and tests fetch through img2dataset for real; stand-in servers too)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


class LoopbackServer(http.server.ThreadingHTTPServer):
    """A threading server whose listen queue takes a client's burst of parallel requests (the stdlib's holds 5)."""

    request_queue_size = 128
    daemon_threads = True


@contextlib.contextmanager
def _running(server: http.server.HTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def serving(handler, port: int = 0) -> contextlib.AbstractContextManager[str]:
    """Serve requests with `handler` on 127.0.0.1:`port` (0: a free port) for the duration of a `with` block, which
    gets the base URL. The port is bound on the call, so a busy one raises `OSError` here."""
    return _running(LoopbackServer(("127.0.0.1", port), handler))


def serve_directory(folder: Path, handler: type[http.server.BaseHTTPRequestHandler] = QuietHandler):
    """Serve `folder` on a free loopback port for the duration of a `with` block, which gets the base URL."""
    return serving(functools.partial(handler, directory=str(folder)))
