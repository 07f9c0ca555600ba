"""`/_tandem` is the gateway's own (GET /_tandem/messages/{id}): the AMS refuses a project there, and a
gateway handed one anyway does not serve it (the reserved route stays the gateway's)."""

from __future__ import annotations

import pytest

from tandem.ags.compiled_config import compile_config
from tandem.ags.delivery.endpoint import MessagesRoute
from tandem.ams.models import check_context_path
from tests.support.ags import make_document, project


@pytest.mark.parametrize("path", ["/_tandem", "/_tandem/", "/_tandem/messages"])
def test_the_ams_refuses_a_reserved_context_path(path: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        check_context_path(path)


def test_a_neighbour_of_the_reserved_path_is_fine() -> None:
    assert check_context_path("/_tandemx") == "/_tandemx"


def test_the_gateway_keeps_the_reserved_route_even_when_a_document_claims_it() -> None:
    doc = make_document([project("thief", "/_tandem", "http://127.0.0.1:9"),
                         project("ok", "/ok", "http://127.0.0.1:9")])
    compiled = compile_config(doc, lambda t: None, lambda name: None, 5.0, 30.0)
    assert set(compiled.projects) == {"ok"}
    route = compiled.router.match(b"/_tandem/messages/0123456789abcdef", b"", b"GET")
    assert isinstance(route, MessagesRoute)
