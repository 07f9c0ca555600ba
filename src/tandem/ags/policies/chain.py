"""A project's compiled policies, and running them for one request.

`compile_chain(raw_project, consumers, services)` is called when a
configuration is applied. It validates each policy with the shared schema
(`tandem.model.policies`, the models the AMS validates with) and builds one
`Step` per policy from the validated model through the builder each policy
module registers (`BUILDERS`), sorted by phase:

    cors (preflight) -> ip-filter -> auth (api-key, basic-auth, jwt)
      -> rate-limit -> quota -> request-headers -> cache lookup

so a preflight carries no credentials, a blocked address costs nothing
more, limits count identified callers, and a cache hit still counts
against them. Response-side work (response header edits, cache fill,
retries) hangs on the chain as `on_response` and is called by the exchange.

`Consumers` indexes the configuration's consumers for the auth steps;
`Services` holds what outlives one configuration (node counters, the
Redis clients, the quota book client, caches): a redeploy does not reset
a rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from tandem.ags.policies.base import Answer, RequestEdit, SharedState, Step
from tandem.model.policies import (
    AUTH_TYPES,
    POLICY_MODELS_BY_TYPE,
    DeliveryPolicy,
    PolicyModel,
    describe_errors,
)

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

log = logging.getLogger("tandem.ags.policies")

PHASES = {"cors": 10, "ip-filter": 20, "api-key": 30, "basic-auth": 31, "jwt": 32, "rate-limit": 40,
          "quota": 50, "request-headers": 60, "cache": 70}
AUTH_KINDS = AUTH_TYPES  # (the schema's list: a by-consumer limit needs one of these)
# policy types the chain itself or the project handles without a request step
NO_STEP = frozenset({"timeout", "retry", "response-headers"})


class Consumers:
    """The configuration's consumers, indexed the way the auth steps look them up."""

    __slots__ = ("by_key_hash", "basic", "jwt", "digest", "names")

    def __init__(self, consumers: list[dict[str, Any]]) -> None:
        self.by_key_hash: dict[str, str] = {}  # sha256 hex of an API key -> consumer name
        self.basic: dict[str, tuple[str, str]] = {}  # username -> (consumer, password hash)
        self.jwt: dict[str, tuple[str, dict[str, Any]]] = {}  # credential key -> (consumer, credential)
        self.names: set[str] = set()
        for c in consumers:
            if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                continue
            name = c["name"]
            self.names.add(name)
            for k in c.get("keys") or []:
                if isinstance(k, dict) and isinstance(k.get("sha256"), str):
                    self.by_key_hash[k["sha256"].lower()] = name
            creds = c.get("credentials") or {}
            for b in creds.get("basic_auth") or []:
                if isinstance(b, dict) and isinstance(b.get("username"), str):
                    self.basic[b["username"]] = (name, str(b.get("password_hash", "")))
            for j in creds.get("jwt") or []:
                if isinstance(j, dict) and isinstance(j.get("key"), str):
                    self.jwt[j["key"]] = (name, j)
        self.digest = hashlib.sha256(json.dumps(consumers, sort_keys=True).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"<Consumers {len(self.names)} keys={len(self.by_key_hash)} basic={len(self.basic)} jwt={len(self.jwt)}>"


class Services:
    """Gateway-wide policy state, created once per serving process (`Gateway.services`).

    Policy modules keep what must outlive a configuration here, under a key of
    their own: `services.state(key, factory)` returns the same object for the
    same key until the process ends."""

    def __init__(self, loop: Any = None, quota: Any = None) -> None:
        self.loop = loop
        self.quota = quota  # the quota book client (tandem.ags.policies.quota), set by the runtime
        self.queue: Any = None  # the message queue client (tandem.ags.policies.delivery), set by the runtime
        self.node_table: Any = None  # a worker's node_counts.SharedTable, when the node has several workers
        self._state: dict[Any, Any] = {}

    def state(self, key: Any, factory: Callable[[], Any]) -> Any:
        value = self._state.get(key)
        if value is None:
            value = self._state[key] = factory()
        return value

    def values(self) -> list[Any]:
        return list(self._state.values())

    async def close(self) -> None:
        """The process stops serving: release every `SharedState` (each within 2 s)."""
        for value in list(self._state.values()):
            if isinstance(value, SharedState):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(value.close(), 2.0)

    def __repr__(self) -> str:
        return f"<Services state={len(self._state)} quota={self.quota!r}>"


class Context:
    """What a builder gets besides its own validated policy.

    `policies` are the project's policy documents as the configuration has them
    (what `key` names counters by); `models` the validated models of the policies
    before this one and of this one (`compile_chain` fills it as it goes; for a
    Context made by hand they are validated on first use)."""

    __slots__ = ("project", "policies", "consumers", "services", "index", "_models")

    def __init__(self, project: dict[str, Any], consumers: Consumers, services: Services, index: int,
                 models: list[PolicyModel] | None = None) -> None:
        self.project, self.consumers, self.services, self.index = project, consumers, services, index
        self.policies: list[dict[str, Any]] = project.get("policies") or []
        self._models = models

    @property
    def models(self) -> list[PolicyModel]:
        if self._models is None:
            self._models = [validate(p) for p in self.policies[:self.index + 1]]
        return self._models

    def other(self, kind: str) -> dict[str, Any] | None:
        """This project's policy of type `kind`, if it has one."""
        for p in self.policies:
            if p.get("type") == kind:
                return p
        return None

    @property
    def has_auth(self) -> bool:
        return any(p.get("type") in AUTH_KINDS for p in self.policies)

    def key(self, *more: Any) -> tuple[Any, ...]:
        """A key naming this policy of this project across configurations (for Services.state)."""
        policy = self.policies[self.index]
        return (self.project["name"], json.dumps(policy, sort_keys=True), *more)


def validate(policy: Mapping[str, Any] | PolicyModel) -> PolicyModel:
    """The validated model of one policy document (raises pydantic.ValidationError, a ValueError)."""
    if isinstance(policy, PolicyModel):
        return policy
    model = POLICY_MODELS_BY_TYPE.get(str(policy.get("type")))
    if model is None:
        raise ValueError(f"unknown policy type {policy.get('type')!r}")
    return model.model_validate(policy)


Builder = Callable[[Any, Context], Step]  # (the validated model of its type, the context) -> step
BUILDERS: dict[str, Builder] = {}
P = TypeVar("P", bound=PolicyModel)


def builder(kind: str) -> Callable[[Callable[[P, Context], Step]], Callable[[P | Mapping[str, Any], Context], Step]]:
    """Register the builder of policy type `kind` (a type of the schema). `compile_chain` calls it with
    the validated model; the function returned also takes a policy document, validated first."""
    if kind not in POLICY_MODELS_BY_TYPE:
        raise ValueError(f"{kind!r} is not a policy type of tandem.model.policies")

    def register(fn: Callable[[P, Context], Step]) -> Callable[[P | Mapping[str, Any], Context], Step]:
        BUILDERS[kind] = fn

        @functools.wraps(fn)
        def build(policy: P | Mapping[str, Any], ctx: Context) -> Step:
            model = validate(policy)
            if model.type != kind:  # type: ignore[attr-defined]
                raise ValueError(f"a {kind!r} builder got a {model.type!r} policy")  # type: ignore[attr-defined]
            return fn(model, ctx)  # type: ignore[arg-type]
        return build
    return register


class Chain:
    """The policies of one project, compiled. Shared by all its requests."""

    __slots__ = ("steps", "n", "resp_edit", "cache", "retry", "kinds", "hooks", "queue")

    def __init__(self, steps: list[Step], resp_edit: RequestEdit | None, cache: Any, retry: Any,
                 kinds: list[str], queue: Any = None) -> None:
        self.steps = steps
        self.queue = queue  # policies.delivery.QueueStep of a queued-delivery project: stored, not proxied
        self.n = len(steps)
        self.resp_edit, self.cache, self.retry = resp_edit, cache, retry
        self.kinds = kinds
        self.hooks = resp_edit is not None or cache is not None or retry is not None

    def __repr__(self) -> str:
        return f"<Chain {' -> '.join(self.kinds)}>"

    def run(self, ex: Exchange) -> bool:
        """Run the steps: True when every one passed at once (the caller sends the request on, after
        `ex.edit`); False when the request was answered, or when a step needs I/O (then the chain
        resumes once it is done and ends with `ex.admit(True)` or `ex.answer(..., True)`)."""
        ex.hook = self
        i = 0
        for step in self.steps:
            i += 1
            r = step.request(ex)
            if r is not None:
                if type(r) is Answer:
                    ex.answer(r)
                else:
                    ex.cp.loop.create_task(self._wait(ex, i, r))
                return False
        return True

    def resume(self, ex: Exchange, i: int, later: bool) -> None:
        steps, n = self.steps, self.n
        while i < n:
            r = steps[i].request(ex)
            i += 1
            if r is None:
                continue
            if type(r) is Answer:
                ex.answer(r, later)
                return
            ex.cp.loop.create_task(self._wait(ex, i, r))
            return
        ex.admit(later)

    async def _wait(self, ex: Exchange, i: int, pending: Any) -> None:
        try:
            r = await pending
        except Exception as exc:  # a policy bug or an I/O failure the step did not handle: fail closed
            log.exception("policy step %s failed for %s", self.steps[i - 1], ex)
            r = Answer(500, "policy_error", f"a policy of this API failed: {type(exc).__name__}")
        if ex.done:
            return
        if r is not None:
            ex.answer(r, True)
        else:
            self.resume(ex, i, True)

    # ---- response side (called by the exchange when `ex.hook` is this chain) ----
    def on_response(self, ex: Exchange, status: int, parts: list[bytes]) -> list[bytes] | None:
        """The upstream's response head: `parts[0]` the status line, then header lines as
        (name, ": ", value, "\\r\\n") runs or joined lines. Returns the parts to send, or
        None when the response is dropped because the request is retried. (Its no-hooks case has an
        inlined copy in Exchange.on_head: tests/unit/test_inlined_copies.py runs both.)"""
        if self.hooks:
            retry = self.retry
            if retry is not None and status in retry.on_status and retry.again(ex, f"upstream answered {status}"):
                return None
            cache = self.cache
            if cache is not None:
                cache.on_response(ex, status, parts)
            edit = self.resp_edit
            if edit is not None:
                parts = edit_response(edit, parts)
        extra = ex.resp_extra
        if extra is not None:
            parts += extra
        return parts


def split_lines(parts: list[bytes]) -> list[list[bytes]]:
    """Response header parts after the status line -> [name, value] pairs."""
    lines: list[list[bytes]] = []
    i, n = 1, len(parts)
    while i < n:
        if i + 3 < n + 1 and i + 1 < n and parts[i + 1] == b": " and i + 3 < n and parts[i + 3] == b"\r\n":
            lines.append([parts[i], parts[i + 2]])
            i += 4
        else:  # a joined line
            name, _, value = parts[i].partition(b":")
            lines.append([name, value.strip()])
            i += 1
    return lines


def edit_response(edit: RequestEdit, parts: list[bytes]) -> list[bytes]:
    lines = edit.apply(split_lines(parts))
    out = [parts[0]]
    for name, value in lines:
        out += (name, b": ", value, b"\r\n")
    return out


def compile_chain(project: dict[str, Any], consumers: Consumers, services: Services) -> tuple[Chain | None, str | None]:
    """(chain or None when the project has no per-request policy, refusal reason or None).

    Each policy is validated with its model of `tandem.model.policies` here, once
    per configuration, and its builder gets the model. A policy this gateway has
    no builder for, one the schema refuses, or one whose builder refuses it makes
    the project refuse requests (501 `policy_not_supported`): an API meant to be
    protected is never served open."""
    policies = project.get("policies") or []
    steps: list[tuple[int, Step]] = []
    resp_edit = cache = retry = queue = None
    kinds: list[str] = []
    models: list[PolicyModel] = []
    for i, policy in enumerate(policies):
        kind = policy.get("type")
        kinds.append(str(kind))
        fn = BUILDERS.get(str(kind))
        if fn is None and kind != "timeout":
            return None, f"this API has a {kind!r} policy, which this gateway cannot enforce"
        try:
            models.append(validate(policy))
        except ValidationError as exc:
            reason = describe_errors(exc)
            log.error("project %r: policy %r refused: %s", project.get("name"), kind, reason)
            return None, f"this API's {kind!r} policy is invalid: {reason}"
        if fn is None:  # timeout: the project's upstream timeouts (compiled_config.Project)
            continue
        try:
            step = fn(models[i], Context(project, consumers, services, i, models))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("project %r: policy %r refused: %s", project.get("name"), kind, exc)
            return None, f"this API's {kind!r} policy is invalid: {exc}"
        if kind == "response-headers":
            resp_edit = step.edit  # type: ignore[attr-defined]
        elif kind == "retry":
            retry = step
        elif kind == "delivery":
            model = models[i]
            if isinstance(model, DeliveryPolicy) and model.mode == "queued":  # ("direct": proxied as usual)
                queue = step
        else:
            if kind == "cache":
                cache = step
            steps.append((PHASES.get(kind, 65), step))
    if not steps and resp_edit is None and retry is None and queue is None:
        return None, None
    steps.sort(key=lambda s: s[0])
    return Chain([s for _, s in steps], resp_edit, cache, retry, kinds, queue), None
