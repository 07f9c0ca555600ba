"""The smuggling and path corpus (issue 13): raw bytes to a real gateway, and what the backend received.

One table: each row is the bytes a client sends on one connection, the
statuses it must get back in order, and what the echo backend must have
received for it (`[]`: nothing at all). The forms that held when the gateway
was probed (CL.TE, TE.CL, obfuscated TE, bare LF, obs-fold, control
characters, chunk overflows, dot-segment and case tricks, client-sent
X-Consumer-Name / X-Forwarded-*), the ones issue 13 found open (encoded
slash, `gzip, chunked`, two Hosts, TRACE, HTTP/2.0 and 0.9 lines, X-Real-IP and
Forwarded), and more from RFC 9112 and known proxy CVEs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ags import send_and_read
from tests.support.harness import CliCluster, holds_for, logged_requests, wait_for

H = b"Host: gw.example\r\n"
Check = Callable[[list[dict[str, Any]]], Any]


def _h(req: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in req["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def paths(*want: str) -> Check:
    def check(got: list[dict[str, Any]]) -> None:
        assert [r["path"] for r in got] == list(want)
    return check


def one(path: str, **expect: Any) -> Check:
    def check(got: list[dict[str, Any]]) -> None:
        assert [r["path"] for r in got] == [path]
        for key, value in expect.items():
            if key == "headers":
                for name, v in value.items():
                    assert _h(got[0]).get(name) == v, (name, _h(got[0]).get(name))
            else:
                assert got[0][key] == value, (key, got[0][key])
    return check


NOTHING: Check = paths()
SMUGGLED_GET = b"GET /priv/smuggled HTTP/1.1\r\n" + H + b"\r\n"

# name: (raw bytes, statuses answered in order, what the backend received)
CORPUS: dict[str, tuple[bytes, list[int], Check]] = {
    # --- framing: CL.TE, TE.CL and friends (held before) ---
    "cl-te": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
              [400], NOTHING),
    "te-cl": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED"
              b"\r\n0\r\n\r\n", [400], NOTHING),
    "te-obfuscated-value": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
                            [501], NOTHING),
    "te-space-before-colon": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
                              [400], NOTHING),
    "te-vertical-tab": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
                        [400], NOTHING),
    "te-trailing-vertical-tab": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
                                 [400], NOTHING),
    "cl-duplicate-differing": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
                               [400], NOTHING),
    "cl-duplicate-same": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
                          [400], NOTHING),
    "cl-leading-plus": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", [400], NOTHING),
    "cl-negative": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\nabc", [400], NOTHING),
    "cl-list": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", [400], NOTHING),
    "cl-hex": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", [400], NOTHING),
    "cl-two-numbers": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: 3 3\r\n\r\nabc", [400], NOTHING),
    "cl-overflow": (b"POST /s/a HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\nabc",
                    [400], NOTHING),
    "cl-spaces-around": (b"POST /s/cl-spaces HTTP/1.1\r\n" + H + b"Content-Length:   3  \r\n\r\nabc", [200],
                         one("/b/cl-spaces", body_bytes=3)),
    # --- line endings, folding, control characters (held before) ---
    "bare-lf": (b"GET /s/a HTTP/1.1\n" + H.replace(b"\r", b"") + b"\n", [400], NOTHING),
    "bare-cr": (b"GET /s/a HTTP/1.1\rHost: gw.example\r\r", [400], NOTHING),
    "bare-lf-in-header": (b"GET /s/a HTTP/1.1\r\n" + H + b"X-A: 1\nTransfer-Encoding: chunked\r\n\r\n",
                          [400], NOTHING),
    "obs-fold": (b"GET /s/a HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n", [400], NOTHING),
    "obs-fold-te": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", [400], NOTHING),
    "ctl-in-header-value": (b"GET /s/a HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", [400], NOTHING),
    "del-in-header-value": (b"GET /s/a HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", [400], NOTHING),
    "nul-in-header-value": (b"GET /s/a HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", [400], NOTHING),
    "nul-in-header-name": (b"GET /s/a HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n", [400], NOTHING),
    "ctl-in-url": (b"GET /s/a\x01b HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "space-in-url": (b"GET /s/a b HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "leading-empty-lines": (b"\r\n\r\nGET /s/lead HTTP/1.1\r\n" + H + b"\r\n", [200], paths("/b/lead")),
    # --- chunked bodies (held before): overflow, bad sizes, extension abuse ---
    "chunk-size-overflow": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                            b"FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n", [400], NOTHING),
    "chunk-size-space": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
                         [400], NOTHING),
    "chunk-size-0x": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
                      [400], NOTHING),
    "chunk-data-longer-than-size": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                                    b"5\r\nhelloXX\r\n0\r\n\r\n", [400], NOTHING),
    "chunk-ext-bare-semicolon": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                                 b"5;\r\nhello\r\n0\r\n\r\n", [400], NOTHING),
    "chunk-ext-bare-lf": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                          b"5;a\nb\r\nhello\r\n0\r\n\r\n", [400], NOTHING),
    "chunk-ext-valid-dropped": (b"POST /s/ext HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                                b"5;name=\"0\\r\\n\\r\\nGET /priv/x\"\r\nhello\r\n0\r\n\r\n", [200],
                                one("/b/ext", body_bytes=5)),
    "chunk-trailer-not-a-header": (b"POST /s/trailer HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                                   b"5\r\nhello\r\n0\r\nX-Consumer-Name: admin\r\n\r\nGET /s/next HTTP/1.1\r\n" + H
                                   + b"\r\n", [200, 200], lambda got: (paths("/b/trailer", "/b/next")(got),
                                                                        _no_header(got, "x-consumer-name"))),
    # --- transfer codings other than exactly chunked (issue 13: were forwarded) ---
    "te-gzip-chunked": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                        [501], NOTHING),
    "te-two-headers": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"0\r\n\r\n", [501], NOTHING),
    "te-chunked-twice": (b"POST /s/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\n0\r\n\r\n", [400], NOTHING),  # (llhttp refuses it first)
    "te-chunked-any-case": (b"POST /s/te-case HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n"
                            b"3\r\nabc\r\n0\r\n\r\n", [200], one("/b/te-case", body_bytes=3)),
    # --- request line and Host (issue 13: were proxied) ---
    "two-hosts": (b"GET /s/a HTTP/1.1\r\nHost: gw.example\r\nHost: other.example\r\n\r\n", [400], NOTHING),
    "empty-then-second-host": (b"GET /s/a HTTP/1.1\r\nHost:\r\nHost: other.example\r\n\r\n", [400], NOTHING),
    "no-host-http11": (b"GET /s/a HTTP/1.1\r\n\r\n", [400], NOTHING),
    "http-2.0-line": (b"GET /s/a HTTP/2.0\r\n" + H + b"\r\n", [505], NOTHING),
    "http-2.0-keep-alive": (b"GET /s/a HTTP/2.0\r\n" + H + b"Connection: keep-alive\r\n\r\n", [505], NOTHING),
    "http-0.9-version": (b"GET /s/a HTTP/0.9\r\n" + H + b"\r\n", [505], NOTHING),
    "http-0.9-simple-request": (b"GET /s/a\r\n\r\n", [505], NOTHING),
    "http-1.2-line": (b"GET /s/a HTTP/1.2\r\n" + H + b"\r\n", [400], NOTHING),
    "http-1.0": (b"GET /s/ten HTTP/1.0\r\n\r\n", [200], paths("/b/ten")),
    "trace": (b"TRACE /s/a HTTP/1.1\r\n" + H + b"\r\n", [405], NOTHING),
    "connect": (b"CONNECT gw.example:443 HTTP/1.1\r\n" + H + b"\r\n", [501], NOTHING),
    "upgrade-h2c": (b"GET /s/a HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", [501], NOTHING),
    "lowercase-method": (b"get /s/a HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "absolute-form-other-host": (b"GET http://evil.example/s/abs HTTP/1.1\r\n" + H + b"\r\n", [200],
                                 lambda got: (paths("/b/abs")(got), _host_is_backend(got))),
    "get-with-body-then-pipelined": (b"GET /s/cl HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n%s"
                                     % (len(SMUGGLED_GET), SMUGGLED_GET) + b"GET /s/second HTTP/1.1\r\n" + H + b"\r\n",
                                     [200, 200], lambda got: (paths("/b/cl", "/b/second")(got),
                                                              _eq(got[0]["body_bytes"], len(SMUGGLED_GET)))),
    # --- paths: dot segments, case, doubled slashes (held before) ---
    "dotdot-above-root": (b"GET /s/../../etc/passwd HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "encoded-dotdot-above-root": (b"GET /s/%2e%2e/%2E%2E/etc HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "dotdot-into-priv": (b"GET /s/../priv/secret HTTP/1.1\r\n" + H + b"\r\n", [401], NOTHING),
    "encoded-dotdot-into-priv": (b"GET /s/%2e%2e/priv/secret HTTP/1.1\r\n" + H + b"\r\n", [401], NOTHING),
    "dotdot-within-project": (b"GET /s/a/../b/./c HTTP/1.1\r\n" + H + b"\r\n", [200], paths("/b/b/c")),
    "case-priv": (b"GET /PRIV/secret HTTP/1.1\r\n" + H + b"\r\n", [404], NOTHING),
    "double-slash-priv": (b"GET //priv/secret HTTP/1.1\r\n" + H + b"\r\n", [404], NOTHING),
    "priv-without-key": (b"GET /priv/secret HTTP/1.1\r\n" + H + b"\r\n", [401], NOTHING),
    # --- paths: encoded slash, backslash, semicolon (issue 13: were forwarded) ---
    "encoded-slash": (b"GET /s/..%2fpriv/secret HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "encoded-slash-upper": (b"GET /s/..%2Fpriv/secret HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "encoded-backslash": (b"GET /s/..%5cpriv/secret HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "backslash": (b"GET /s/..\\priv/secret HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "semicolon": (b"GET /s/..;/priv/secret HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "encoded-nul": (b"GET /s/a%00.txt HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "encoded-slash-absolute-form": (b"GET http://gw.example/s/..%2fpriv/x HTTP/1.1\r\n" + H + b"\r\n", [400], NOTHING),
    "encoded-space-is-fine": (b"GET /s/a%20b HTTP/1.1\r\n" + H + b"\r\n", [200], paths("/b/a%20b")),
    "encoded-slash-in-query-is-fine": (b"GET /s/q?to=%2Fx%5C;y HTTP/1.1\r\n" + H + b"\r\n", [200],
                                       one("/b/q", query="to=%2Fx%5C;y")),
    # --- headers a client must not set (held before, and X-Real-IP / Forwarded new) ---
    "client-identity-headers": (b"GET /s/hdr HTTP/1.1\r\n" + H + b"X-Consumer-Name: admin\r\nX-Forwarded-For: 6.6.6.6"
                                b"\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n"
                                b"X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\n\r\n", [200],
                                one("/b/hdr", headers={"x-consumer-name": None, "x-real-ip": None,
                                                       "forwarded": None, "x-forwarded-for": ["6.6.6.6, 127.0.0.1"],
                                                       "x-forwarded-host": ["gw.example"],
                                                       "x-forwarded-proto": ["http"]})),
    "hop-by-hop-named-by-connection": (b"GET /s/hop HTTP/1.1\r\n" + H + b"Connection: keep-alive, X-Secret\r\n"
                                       b"Keep-Alive: timeout=5\r\nProxy-Authorization: Basic eDp5\r\n\r\n",
                                       [200], one("/b/hop", headers={"keep-alive": None,
                                                                     "proxy-authorization": None})),
}


def _eq(a: Any, b: Any) -> None:
    assert a == b, (a, b)


def _no_header(got: list[dict[str, Any]], name: str) -> None:
    for r in got:
        assert name not in _h(r), (r["path"], _h(r).get(name))


def _host_is_backend(got: list[dict[str, Any]]) -> None:
    host = _h(got[0])["host"]
    assert host[0].startswith("127.0.0.1:"), host


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, backend: tuple[str, Path]) -> Iterator[CliCluster]:
    with CliCluster.started(tmp_path_factory.mktemp("smuggling"), workers=1) as c:
        url, _ = backend
        for name, context, target, policies in (("s", "/s", url + "/b", []),
                                                ("priv", "/priv", url + "/private", [{"type": "api-key"}])):
            body = {"name": name, "context_path": context, "targets": [{"url": target}], "policies": policies}
            assert c.api.post("/api/v1/projects", json=body).status_code == 201
            r = c.api.post(f"/api/v1/projects/{name}/deploy", json={"environment": "default"})
            assert r.status_code == 202, r.text
        wait_for(lambda: c.gateway_get("/s/ready").status_code == 200
                 and c.gateway_get("/priv/x").status_code == 401, 10, "projects served")
        yield c


def test_smuggling_and_path_corpus(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    _, log = backend
    port = cluster.ports["AGS"][0]
    failures: list[str] = []
    total = len(logged_requests(log))
    for name, (raw, statuses, check) in CORPUS.items():
        before = len(logged_requests(log))
        try:
            answers = asyncio.run(send_and_read(port, raw, responses=len(statuses), timeout=5))
        except Exception as exc:  # (a reset before an answer is a failure of the row, reported with the rest)
            answers = []
            failures.append(f"{name}: {exc!r}")
            continue
        got = logged_requests(log)[before:]
        try:
            assert [a[0] for a in answers] == statuses, f"statuses {[a[0] for a in answers]} != {statuses}"
            for status, headers, _ in answers:
                assert "x-request-id" in headers
                if status >= 400:
                    assert headers.get("content-type") == "application/json"
            check(got)
        except AssertionError as exc:
            failures.append(f"{name}: {exc} (backend got {[r['path'] for r in got]})")
        total += len(got)
    assert not failures, "\n".join(failures)
    # nothing arrives late (a refused request's bytes sent on after its answer)
    holds_for(lambda: len(logged_requests(log)) == total, 0.5, "no request reached the backend late")
