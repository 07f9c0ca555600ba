"""`cors`: Cross-Origin Resource Sharing answered at the gateway.

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
answered here and never reaches the backend: 204 with the allow headers
when the origin, the method and the requested headers are allowed, else
403 `cors_forbidden` naming what is not. An actual request from an allowed
origin gets `Access-Control-Allow-Origin` (and credentials / exposed
headers) added to its response; one from another origin is passed on
without them, so the browser withholds the response (the server cannot
tell a browser from any other client, so refusing it would protect
nothing). An empty `allow_headers` reflects what the preflight asks for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tandem.ags.policies.base import Answer, Step, add_response_header, request_header
from tandem.ags.policies.chain import Context, builder
from tandem.model.policies import CORS_DEFAULT_METHODS, CorsPolicy

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange


class CorsStep(Step):
    kind = "cors"

    def __init__(self, policy: CorsPolicy) -> None:
        origins = policy.allow_origins
        self.any_origin = "*" in origins
        self.origins = frozenset(o.rstrip("/").lower().encode() for o in origins if o != "*")
        methods = policy.allow_methods or CORS_DEFAULT_METHODS  # (an empty list has always meant the default)
        self.methods = frozenset(m.encode() for m in methods)
        self.methods_line = b"Access-Control-Allow-Methods: " + ", ".join(methods).encode() + b"\r\n"
        allow_headers = policy.allow_headers
        self.allow_headers = frozenset(h.lower().encode() for h in allow_headers)
        self.headers_line = (b"Access-Control-Allow-Headers: " + ", ".join(allow_headers).encode() + b"\r\n"
                             if allow_headers else None)
        expose = policy.expose_headers
        self.expose_line = (b"Access-Control-Expose-Headers: " + ", ".join(expose).encode() + b"\r\n"
                            if expose else None)
        self.credentials = policy.allow_credentials
        self.max_age_line = b"Access-Control-Max-Age: %d\r\n" % policy.max_age

    def allow_origin_lines(self, origin: bytes) -> list[bytes] | None:
        if not self.any_origin and origin.rstrip(b"/").lower() not in self.origins:
            return None
        if self.any_origin and not self.credentials:
            lines = [b"Access-Control-Allow-Origin: *\r\n"]
        else:
            lines = [b"Access-Control-Allow-Origin: " + origin + b"\r\n", b"Vary: Origin\r\n"]
        if self.credentials:
            lines.append(b"Access-Control-Allow-Credentials: true\r\n")
        return lines

    def request(self, ex: Exchange) -> Answer | None:
        origin = request_header(ex, b"origin")
        if origin is None:
            return None
        lines = self.allow_origin_lines(origin)
        wanted = request_header(ex, b"access-control-request-method") if ex.method == b"OPTIONS" else None
        if wanted is None:  # an actual request
            if lines is not None:
                for line in lines:
                    add_response_header(ex, line)
                if self.expose_line is not None:
                    add_response_header(ex, self.expose_line)
            return None
        if lines is None:
            return Answer(403, "cors_forbidden", f"origin {origin.decode(errors='replace')!r} is not allowed")
        if wanted.strip() not in self.methods:
            return Answer(403, "cors_forbidden", f"method {wanted.decode(errors='replace')!r} is not allowed")
        asked = request_header(ex, b"access-control-request-headers") or b""
        names = [h.strip() for h in asked.split(b",") if h.strip()]
        if self.headers_line is not None:
            refused = [n for n in names if n.lower() not in self.allow_headers]
            if refused:
                return Answer(403, "cors_forbidden",
                              f"header(s) {b', '.join(refused).decode(errors='replace')} not allowed")
            headers_line: bytes | None = self.headers_line
        else:
            headers_line = b"Access-Control-Allow-Headers: " + b", ".join(names) + b"\r\n" if names else None
        out = lines + [self.methods_line, self.max_age_line]
        if headers_line is not None:
            out.append(headers_line)
        return Answer(204, headers=out)


@builder("cors")
def build(policy: CorsPolicy, ctx: Context) -> Step:
    return CorsStep(policy)
