"""API Management Server: admin API, domain services, console.

    create_app(server) -> FastAPI      # once per server process
    bootstrap(server)                  # on activation: admin token + deployment worker

Imported lazily so that light modules (`tandem.ams.tokenfile`, used by the CLI)
do not pull in FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bootstrap", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tandem.ams import app

        return getattr(app, name)
    raise AttributeError(f"module 'tandem.ams' has no attribute {name!r}")
