"""The admin API's routers, one per resource family."""

from __future__ import annotations

from fastapi import Request

from tandem.ams.services import Services


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
