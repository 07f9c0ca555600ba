"""The config document's `redrive` project field (tandem.model.document), pure:
a project with a counter above 0 carries it (on a copy), the digest covers it,
and a document without counters is byte-identical to one built before redrive
existed. The environment record's counter helpers too."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from tandem.ams.services.environments import redrive_counters
from tandem.model.document import DIGEST_FIELDS, build_document, canonical_json, verify_document

PETS: dict[str, Any] = {"name": "pets", "context_path": "/pets", "targets": [{"url": "http://127.0.0.1:9", "weight": 1}],
                        "hosts": [], "methods": [], "resources": [], "policies": []}
ORDERS: dict[str, Any] = {**PETS, "name": "orders", "context_path": "/orders"}
PROJECTS = {"pets": PETS, "orders": ORDERS}
AT = "2026-12-04T00:00:00.000000Z"


def old_digest(environment: str, revision: int, projects: dict[str, Any]) -> str:
    """The digest as documents had it before redrive (docs/config-feed.md), computed by hand."""
    body = {"environment": environment, "revision": revision,
            "projects": [projects[n] for n in sorted(projects)], "consumers": []}
    return hashlib.sha256(canonical_json(body)).hexdigest()


@pytest.mark.parametrize("redrive", [None, {}, {"pets": 0}, {"gone": 3}])
def test_no_positive_counter_leaves_the_document_as_it_was(redrive: dict[str, int] | None) -> None:
    doc = build_document("default", 4, PROJECTS, [], AT, redrive=redrive)
    assert all("redrive" not in p for p in doc["projects"])
    assert doc["projects"][0] is ORDERS and doc["projects"][1] is PETS  # the snapshots themselves
    assert doc == build_document("default", 4, PROJECTS, [], AT)
    assert doc["digest"] == old_digest("default", 4, PROJECTS)


def test_a_counter_rides_on_a_copy_of_its_project_and_the_digest_covers_it() -> None:
    stored = copy.deepcopy(PROJECTS)
    doc = build_document("default", 5, stored, [], AT, redrive={"pets": 2, "orders": 0})
    orders, pets = doc["projects"]
    assert pets == {**PETS, "redrive": 2} and "redrive" not in orders
    assert stored == PROJECTS, "the stored snapshots are not changed"
    assert verify_document(doc) is None
    assert doc["digest"] != old_digest("default", 5, PROJECTS), "the counter is part of what is hashed"
    assert set(DIGEST_FIELDS) == {"environment", "revision", "projects", "consumers"}
    for tampered in ({**pets, "redrive": 3}, {k: v for k, v in pets.items() if k != "redrive"}):
        bad = {**doc, "projects": [orders, tampered]}
        assert (verify_document(bad) or "").startswith("digest mismatch")


def test_counter_helper_copies() -> None:
    record: dict[str, Any] = {"name": "default", "revision": 3, "projects": PROJECTS,
                              "redrive": {"pets": 2, "orders": 1}}
    counters = redrive_counters(record)
    counters["pets"] = 9
    assert record["redrive"] == {"pets": 2, "orders": 1}, "a copy"
    assert redrive_counters({"name": "x", "revision": 0, "projects": {}}) == {}
