"""moto (S3, IAM) in server mode on 127.0.0.1, logging every request it answers as a JSON line.

    python tests/models/moto_server.py --port P --log requests.jsonl [--seek-ranges]

The log (method, path, query, Range header, status) is what the tests count GETs from: a line is
written and flushed when the response starts, before the client can see it.

`--seek-ranges` (the benchmark only): moto reads a whole object into memory for every ranged GET,
under a per-object lock, so parallel ranged downloads of a 1 GB object would measure moto, not the
client. With this flag a simple `Range: bytes=a-b` GET reads just those bytes from moto's own
stored copy; everything else (headers, ETags, If-Match, errors) is still moto's code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from typing import Any

_SIMPLE_RANGE = re.compile(r"^bytes=\d+-\d*$")


class RequestLog:
    """WSGI middleware: one JSON line per request."""

    def __init__(self, app: Any, path: str):
        self.app = app
        self.out = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        def logging_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            line = json.dumps({"method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
                               "query": environ.get("QUERY_STRING", ""), "range": environ.get("HTTP_RANGE"),
                               "status": int(status.split()[0])})
            with self.lock:
                self.out.write(line + "\n")
            return start_response(status, headers, exc_info)

        return self.app(environ, logging_start_response)


def patch_seek_ranges() -> None:
    from moto.s3 import models, responses

    local = threading.local()
    original_get = responses.S3Response.get_object
    original_value = models.FakeKey.value

    class RangeReader:
        """Stands in for the object's bytes inside one ranged GET: len() and one slice, read by seeking."""

        def __init__(self, key: Any):
            self.key = key

        def __len__(self) -> int:
            return self.key.contentsize

        def __bool__(self) -> bool:
            return True

        def __getitem__(self, part: slice) -> bytes:
            start, stop, _ = part.indices(self.key.contentsize)
            with self.key.lock:
                self.key._value_buffer.seek(start)
                return self.key._value_buffer.read(max(0, stop - start))

    def get_object(self: Any) -> Any:
        local.ranged = bool(_SIMPLE_RANGE.match(self.headers.get("range") or "")) and not self._get_int_param("partNumber")
        try:
            return original_get(self)
        finally:
            local.ranged = False

    def value(self: Any) -> Any:
        return RangeReader(self) if getattr(local, "ranged", False) else original_value.fget(self)

    responses.S3Response.get_object = get_object
    models.FakeKey.value = property(value, original_value.fset)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--seek-ranges", action="store_true")
    args = parser.parse_args()

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, run_simple

    if args.seek_ranges:
        patch_seek_ranges()

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *a: Any, **k: Any) -> None:  # the JSON log above replaces werkzeug's
            pass

    app = DomainDispatcherApplication(create_backend_app)
    print(f"moto on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    run_simple("127.0.0.1", args.port, RequestLog(app, args.log), threaded=True, request_handler=QuietHandler)


if __name__ == "__main__":
    main()
