"""A synchronous HTTP client that fails over across a list of base URLs.

`Client("http://a:17100;http://b:17110", token)`: each call starts at the URL
that last worked. A connection that cannot be made (refused, unreachable,
connect timeout) moves to the next URL at once: an AMS that is not active
refuses connections on its client port, so the active is found in one
round. Once a request may have reached a server, only idempotent methods are
retried elsewhere (a POST that timed out may have happened). A 503 (a server
going passive while draining) also moves idempotent calls on. Every attempt
is bounded by `connect_timeout` and `timeout`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx

from tandem.errors import TandemError

log = logging.getLogger("tandem.client")

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ClientError(TandemError):
    """The request failed (exit code 1)."""


class Unreachable(ClientError):
    """No URL of the list answered."""


class HTTPStatusError(ClientError):
    """The server answered with an error status; `code`/`field` come from its JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, field: str | None = None,
                 body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.code, self.field, self.body = status, code, field, body


def split_urls(urls: str | Sequence[str]) -> list[str]:
    items = urls.split(";") if isinstance(urls, str) else list(urls)
    out = [u.strip().rstrip("/") for u in items if u and u.strip()]
    if not out:
        raise ValueError("no URL given")
    for u in out:
        if not u.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {u!r}")
    return out


class Client:
    def __init__(self, urls: str | Sequence[str], token: str | None = None, timeout: float = 10.0,
                 connect_timeout: float = 1.0) -> None:
        self.urls = split_urls(urls)
        self.token = token
        self.preferred = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, follow_redirects=False,
                                  timeout=httpx.Timeout(timeout, connect=connect_timeout))

    def __repr__(self) -> str:
        return f"<Client urls={self.urls} preferred={self.urls[self.preferred]!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def base_url(self) -> str:
        """The URL that worked last (the first one before any call)."""
        return self.urls[self.preferred]

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                content: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> httpx.Response:
        """One call, failing over; returns any response < 500 (or a 5xx the last URL gave)."""
        method = method.upper()
        order = [(self.preferred + i) % len(self.urls) for i in range(len(self.urls))]
        problems: list[str] = []
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        for n, index in enumerate(order):
            url = self.urls[index] + path
            try:
                resp = self._http.request(method, url, json=json, params=params, content=content,
                                          headers=headers, **extra)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                problems.append(f"{self.urls[index]}: {_reason(exc)}")
                continue
            except httpx.TransportError as exc:
                problems.append(f"{self.urls[index]}: {_reason(exc)}")
                if method in IDEMPOTENT:
                    continue
                raise ClientError(f"{method} {url}: {_reason(exc)}; not retried elsewhere (it may have "
                                  "been applied)") from exc
            if resp.status_code == 503 and method in IDEMPOTENT and n < len(order) - 1:
                problems.append(f"{self.urls[index]}: 503")
                continue
            self.preferred = index
            return resp
        raise Unreachable(f"{method} {path}: no server answered ({'; '.join(problems)})")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """`request`, then the JSON body (None for 204/304); raises HTTPStatusError for >= 400."""
        resp = self.request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise _status_error(resp)
        if resp.status_code in (204, 304) or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise ClientError(f"{method} {path}: HTTP {resp.status_code} with a body that is not JSON") from exc

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.call("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.call("DELETE", path, **kwargs)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _status_error(resp: httpx.Response) -> HTTPStatusError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return HTTPStatusError(resp.status_code, body["message"], body.get("code"), body.get("field"), body)
    text = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else resp.reason_phrase
    return HTTPStatusError(resp.status_code, text, body=body)
