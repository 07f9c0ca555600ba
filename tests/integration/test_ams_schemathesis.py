"""A bounded schemathesis run against the real AMS app (real store, real auth):
schema-valid and schema-invalid requests to every operation of /openapi.json.
No 5xx, every status code and response body as documented, content types right.

Two checks are left out on purpose: `positive_data_acceptance` (the schema
cannot express every rule: a target URL must name a host, context paths are
unique, ... so a schema-valid request may rightly get a 422) and
`negative_data_rejection` (it counts framework conventions as faults, e.g. a
repeated scalar query parameter, where FastAPI takes the last value).
Derandomized so CI is repeatable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

try:
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi import checks as openapi_checks
except ImportError:  # pragma: no cover - the dependency is declared in the dev extras
    if os.environ.get("CI"):
        raise
    pytest.skip("schemathesis is not installed (pip install -e '.[dev]')", allow_module_level=True)

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tests.support.ams import InProcessAms

EXAMPLES = 12
BUDGET_S = 60.0
EXCLUDED = [openapi_checks.positive_data_acceptance, openapi_checks.negative_data_rejection]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_errors_and_documented_responses(tmp_path: Path, mode: GenerationMode) -> None:
    with InProcessAms(tmp_path / "ams") as ams:
        auth = {"Authorization": f"Bearer {ams.token}"}
        # some state, so reads and deletes sometimes find something
        ams.client.post("/api/v1/projects", headers=auth, json={
            "name": "pets", "context_path": "/pets", "targets": [{"url": "http://127.0.0.1:9000"}]})
        ams.client.post("/api/v1/consumers", headers=auth, json={"name": "acme"})
        schema = schemathesis.openapi.from_asgi("/openapi.json", ams.app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        failures: dict[str, str] = {}
        calls = 0
        t0 = time.monotonic()
        for op in operations:
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                nonlocal calls
                if case.path == "/api/v1/gateway/config":
                    case.query = {**(case.query or {}), "wait": 0}  # do not hold a long poll
                calls += 1
                case.call_and_validate(headers=auth, excluded_checks=EXCLUDED)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, op.label  # nothing to get wrong (no input at all)
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then report them all
                failures[op.label] = " ".join(str(exc).split())[:600]
        elapsed = time.monotonic() - t0
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
    assert calls >= len(operations), calls
    assert elapsed < BUDGET_S, f"schemathesis run took {elapsed:.1f} s"


STATEFUL_STEPS = 12
STATEFUL_EXAMPLES = 15
RANK = {"viewer": 1, "operator": 2, "admin": 3}


class FreshAms:
    """The AMS app, put back into the same state (one user of `role`, one project: a store
    snapshot) before every example of a stateful run: the state machine's draws depend on the
    answers it got, so every example must start from the same state, the same ids included."""

    def __init__(self, folder: Path, role: str) -> None:
        ams = self.ams = InProcessAms(folder / "ams")
        admin = {"Authorization": f"Bearer {ams.token}"}
        r = ams.client.post("/api/v1/users", headers=admin, json={"name": f"the-{role}", "role": role})
        assert r.status_code == 201, r.text
        self.auth = {"Authorization": f"Bearer {r.json()['token']}"}
        ams.client.post("/api/v1/projects", headers=admin, json={
            "name": "pets", "context_path": "/pets", "targets": [{"url": "http://127.0.0.1:9000"}]})
        ams.client.get("/api/v1/whoami", headers=self.auth)  # its last use stamped: no write on first use
        self.snap = ams.store.snapshot()
        self.app = ams.app

    def reset(self) -> None:
        with self.ams.app.state.services.state.lock:
            self.ams.store.restore(self.snap)

    def close(self) -> None:
        self.ams.close()


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_stateful_with_each_role(tmp_path: Path, role: str) -> None:
    """Schemathesis's stateful phase (links inferred from the schema: create -> read -> replace ->
    delete chains) as a user of each role, each example on a fresh AMS. No 5xx, every response as
    documented, and an operation beyond the role is a 403 naming the role it needs (never served)."""
    app = FreshAms(tmp_path, role)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app.app)
    needs = {(m.upper(), p): op["x-tandem-role"] for p, ops in schema.raw_schema["paths"].items()
             for m, op in ops.items()}
    seen: dict[str, int] = {"calls": 0, "forbidden": 0}
    t0 = time.monotonic()

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            app.reset()

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            if case.path == "/api/v1/gateway/config":
                case.query = {**(case.query or {}), "wait": 0}
            case.headers = {**(case.headers or {}), **app.auth}  # the role's token, never a generated one
            return {"headers": dict(app.auth)}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None,
                              **kwargs: Any) -> None:
            seen["calls"] += 1
            need = needs[(case.method.upper(), case.path)]
            if need != "public" and RANK.get(need, 3) > RANK[role]:
                # beyond the role: refused before validation, whatever the input
                assert response.status_code == 403, (case.method, case.path, response.status_code)
                assert response.json()["role"] in ("operator", "admin")
                seen["forbidden"] += 1
                return
            case.validate_response(response, excluded_checks=EXCLUDED)

    try:
        Machine.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=STATEFUL_STEPS,
                                      deadline=None, derandomize=True, database=None,
                                      phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    finally:
        app.close()
    elapsed = time.monotonic() - t0
    print(f"stateful {role}: {seen['calls']} calls, {seen['forbidden']} refused for the role, {elapsed:.1f} s")
    assert seen["calls"] >= STATEFUL_EXAMPLES
    if role != "admin":
        assert seen["forbidden"] > 0
    assert elapsed < BUDGET_S, f"stateful run took {elapsed:.1f} s"
