"""Test helper: answer an HTTP GET with `data`, honouring a single `Range: bytes=N-` request header
(206 partial content, 416 when N is past the end), as the download tests' local servers need."""

from __future__ import annotations

import re
from http.server import BaseHTTPRequestHandler

_RANGE = re.compile(r"bytes=(\d+)-")


def send_with_range(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    start = 0
    match = _RANGE.fullmatch(handler.headers.get("Range") or "")
    if match:
        start = int(match.group(1))
        if start >= len(data):
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(data)}")
            handler.end_headers()
            return
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
        handler.send_response(200)
    handler.send_header("Content-Length", str(len(data) - start))
    handler.end_headers()
    handler.wfile.write(data[start:])
