"""The access log's lines: valid JSON for any path and Host header, written whole."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.ags.accesslog import NULL, AccessLog, quoted


def _lines(log: AccessLog) -> list[dict[str, object]]:
    log.flush()
    return [json.loads(x) for x in Path(log.path).read_text().splitlines()]


def test_a_plain_line(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "a.log"))
    log.write(b"rid-1", b"10.0.0.1", b"GET", b"/pets/1?x=2", b"api.example.com", 200, quoted("pets"),
              b'"127.0.0.1:9000"', 0.0015204, 0.0013101)
    log.write(b"rid-2", b"10.0.0.1", b"POST", b"/pets", b"", 502, NULL, NULL, 0.0002, None)
    a, b = _lines(log)
    assert a["path"] == "/pets/1?x=2" and a["host"] == "api.example.com" and a["project"] == "pets"
    assert a["duration_ms"] == 1.520 and a["upstream_ms"] == 1.310 and a["status"] == 200
    assert b["project"] is None and b["upstream"] is None and b["upstream_ms"] is None
    log.close()


@settings(max_examples=300, deadline=None)
@given(path=st.binary(max_size=40), host=st.binary(max_size=20))
def test_any_path_and_host_give_a_json_line(tmp_path_factory: object, path: bytes, host: bytes) -> None:
    # (the fast check is one translate() over both fields: a character needing escape in either one
    # must still be escaped, and a safe field must come out as it came in)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        log = AccessLog(str(Path(d) / "a.log"))
        log.write(b"r", b"127.0.0.1", b"GET", path, host, 200, NULL, NULL, 0.001, None)
        (line,) = _lines(log)
        log.close()
    assert line["path"] == path.decode("latin-1") and line["host"] == host.decode("latin-1")
