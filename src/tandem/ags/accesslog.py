"""The access log: one JSON object per line, buffered, appended with O_APPEND.

A line costs about 1.4 us: one bytes %-format. Only the path and the Host
header can hold characters that need escaping (the request id is ours or
checked, the method a token, names are pre-quoted by the caller), and one
`bytes.translate` over both finds them (a regex search per field cost 0.3 us
each). Lines are written in batches of whole
lines (at 64 KiB, and by the gateway's sweeper every 250 ms), so several
worker processes appending to one file never interleave a line.

    {"ts":"2026-11-25T10:00:01.123Z","request_id":"..","client":"127.0.0.1","method":"GET",
     "path":"/petstore/pets","host":"api.example.com","status":200,"project":"petstore",
     "upstream":"127.0.0.1:9000","duration_ms":1.520,"upstream_ms":1.310}
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Final

log = logging.getLogger("tandem.ags")

FLUSH_BYTES: Final = 64 * 1024
NULL: Final = b"null"
_UNSAFE: Final = re.compile(rb'[^\x20-\x7e]|["\\]')
_SAFE: Final = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')  # what needs no escaping in a JSON string
_LINE: Final = (b'{"ts":"%s.%03dZ","request_id":"%s","client":"%s","method":"%s","path":"%s","host":"%s",'
         b'"status":%d,"project":%s,"upstream":%s,"duration_ms":%.3f,"upstream_ms":%s}\n')


def quoted(value: str | None) -> bytes:
    """A JSON value for a name the caller logs often (computed once, e.g. per project)."""
    return json.dumps(value).encode()


def _escaped(value: bytes) -> bytes:
    return json.dumps(value.decode("latin-1")).encode()[1:-1]


class AccessLog:
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines: list[bytes] = []
        self.size = 0
        self._sec = -1
        self._stamp = b""

    def write(self, request_id: bytes, client: bytes, method: bytes, path: bytes, host: bytes, status: int,
              project: bytes, upstream: bytes, duration: float, upstream_time: float | None) -> None:
        """`project` and `upstream` are JSON values already (`quoted()` or NULL)."""
        if (path + host).translate(None, _SAFE):  # (one C pass over both, ~4x cheaper than two searches)
            if _UNSAFE.search(path) is not None:
                path = _escaped(path)
            if _UNSAFE.search(host) is not None:
                host = _escaped(host)
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        line = _LINE % (self._stamp, int((now - sec) * 1000), request_id, client, method, path, host, status,
                        project, upstream, duration * 1000,
                        NULL if upstream_time is None else b"%.3f" % (upstream_time * 1000))
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        data = b"".join(self.lines)
        self.lines.clear()
        self.size = 0
        try:
            os.write(self.fd, data)
        except OSError as exc:  # a full disk must not stop the traffic
            log.warning("access log %s: write failed: %s", self.path, exc)

    def close(self) -> None:
        self.flush()
        os.close(self.fd)
