"""Run moto's S3-compatible API server on 127.0.0.1 and a free port, for tests/test_cloud.py.

Started as its own process (`python tests/moto_server.py`), it prints the port it bound on the
first line of standard output and serves until it is terminated. It never talks to a real cloud.

It also counts, per object path, the response-body bytes it served to GET requests, so a test can
prove that reading the start of a large object did not download all of it:
`GET /_served` returns that count as JSON and `POST /_served` resets it.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

STATS_PATH = "/_served"


class ServedBytes:
    """WSGI middleware: counts the bytes of every GET response body, by request path."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app
        self.served: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        path = environ.get("PATH_INFO", "")
        if path == STATS_PATH:
            return self.stats(environ, start_response)
        body = self.app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET":
            return body
        return self.counted(path, body)

    def counted(self, path: str, body: Iterable[bytes]) -> Iterable[bytes]:
        try:
            for chunk in body:
                with self.lock:
                    self.served[path] += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def stats(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            if environ["REQUEST_METHOD"] == "POST":
                self.served.clear()
            payload = json.dumps(dict(self.served)).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [payload]


def main() -> None:
    app = ServedBytes(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(server.server_port, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
