"""The web console: one static page over the admin API, served by the AMS at `/console`.

No build step and no server-side rendering: `static/index.html` loads
`console.js` and `console.css`, which ask the admin API (with the session
cookie of `tandem.ams.services.sessions`) for everything they show, so every
screen follows the API's own rules (roles, validation, audit). `/` redirects
here. The files ship in the package (`package-data` in pyproject.toml) and are
read once per process.

Every console answer carries a strict Content-Security-Policy (scripts and
styles from this origin only; `connect-src` also allows the peer AMS's
`/api/v1/health`, which the page asks during a failover), `X-Frame-Options:
DENY` and `no-store` for the page itself.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import RedirectResponse, Response

FILES = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' http: https:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}


@cache
def asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def mount(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/console", status_code=307)

    @app.get("/console", include_in_schema=False)
    def page() -> Response:
        return Response(asset("index.html"), media_type="text/html; charset=utf-8",
                        headers={**HEADERS, "Cache-Control": "no-store"})

    @app.get("/console/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in FILES:
            raise HTTPException(404, f"no console file {name!r}")
        return Response(asset(name), media_type=FILES[name], headers={**HEADERS, "Cache-Control": "no-cache"})
