"""Deployments as durable jobs.

1. `start` validates (project exists, no context-path clash with what the
   environment already serves), then commits the job as `pending`, with the
   project snapshot it will deploy, and indexes it in `ams.open-jobs`.
2. `execute` (same request, or the worker for a job an earlier active left
   pending) commits, in one change, the environment's new revision and the
   job as `in_progress` with that revision.
3. The job is `deployed` once every live gateway of the environment reports
   `applied >= revision`; with no live gateway it is `deployed` at once (a
   gateway that arrives later pulls the current revision anyway). The worker
   records that, or `failed` when live gateways have not applied it within
   `APPLY_TIMEOUT`.

An undeployment is the same job with `action = "undeploy"`; its `deployed`
means the removal has reached every live gateway. All of it is in the store,
so the active that takes over after a crash resumes where this one stopped.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from tandem.ams.api_errors import ApiError, invalid
from tandem.ams.app_state import NS_DEPLOYMENTS, NS_OPEN_JOBS, NS_PROJECTS, AmsState, now_iso, parse_iso
from tandem.ams.services.environments import channel, env_op, get_env, route_conflict
from tandem.ams.services.registry import JOBS_CHANNEL, RegistryService
from tandem.store import Op

log = logging.getLogger("tandem.ams.deployments")

APPLY_TIMEOUT = 300.0


def new_job_id() -> str:
    return f"dep-{int(time.time() * 1000):013d}-{secrets.token_hex(3)}"


class DeploymentService:
    def __init__(self, state: AmsState, registry: RegistryService) -> None:
        self.state, self.registry = state, registry

    def start(self, project: str, env: str, action: str) -> dict[str, Any]:
        with self.state.lock:
            store = self.state.store()
            deployed = get_env(store, env)["projects"]
            if action == "deploy":
                snapshot = store.get(NS_PROJECTS, project)
                if snapshot is None:
                    raise ApiError(404, "not_found", f"no project named {project!r}")
                clash = route_conflict(deployed, snapshot)
                if clash is not None:
                    raise invalid("context_path", f"{snapshot['context_path']!r} is already served in "
                                                  f"environment {env!r} by project {clash!r}")
            else:
                snapshot = None
                if project not in deployed:
                    raise ApiError(409, "not_deployed", f"project {project!r} is not deployed to {env!r}")
            now, job_id = now_iso(), new_job_id()
            job: dict[str, Any] = {"id": job_id, "project": project, "environment": env, "action": action,
                                   "status": "pending", "revision": None, "snapshot": snapshot, "error": None,
                                   "created_at": now, "updated_at": now}
            self.state.commit([Op(NS_DEPLOYMENTS, job_id, job), Op(NS_OPEN_JOBS, job_id, {})])
            return self.execute(job_id)

    def execute(self, job_id: str) -> dict[str, Any]:
        """Move a pending job to in_progress (or deployed/failed); no-op for any other status."""
        with self.state.lock:
            store = self.state.store()
            job = dict(store.get(NS_DEPLOYMENTS, job_id) or {})
            if job.get("status") != "pending":
                return job
            env = get_env(store, job["environment"])
            projects = dict(env["projects"])
            if job["action"] == "deploy":
                clash = route_conflict(projects, job["snapshot"])
                if clash is not None:
                    return self._finish(job, "failed", f"context path {job['snapshot']['context_path']!r} is "
                                                       f"now served by project {clash!r}")
                projects[job["project"]] = job["snapshot"]
            else:
                projects.pop(job["project"], None)  # (its redrive counter stays: it only ever grows)
            env.update(revision=env["revision"] + 1, projects=projects)
            job.update(revision=env["revision"], updated_at=now_iso())
            done = not self.registry.live(job["environment"])
            job["status"] = "deployed" if done else "in_progress"
            ops = [env_op(env), Op(NS_DEPLOYMENTS, job_id, job)]
            if done:
                ops.append(Op(NS_OPEN_JOBS, job_id, None))
            self.state.commit(ops, channel(job["environment"]), JOBS_CHANNEL)
            log.info("deployment %s: %s %s to %s at revision %d: %s", job_id, job["action"], job["project"],
                     job["environment"], job["revision"], job["status"])
            return job

    def _finish(self, job: dict[str, Any], status: str, error: str | None) -> dict[str, Any]:
        job.update(status=status, error=error, updated_at=now_iso())
        self.state.commit([Op(NS_DEPLOYMENTS, job["id"], job), Op(NS_OPEN_JOBS, job["id"], None)])
        log.info("deployment %s: %s%s", job["id"], status, f" ({error})" if error else "")
        return job

    def gateways(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        revision = job.get("revision") or 0
        return [{"name": g["name"], "pair": g.get("pair"), "state": g.get("state"), "applied": g.get("applied"),
                 "last_seen": g["last_seen"],
                 "status": "applied" if (g.get("applied") or 0) >= revision else "pending"}
                for g in self.registry.live(job["environment"])]

    def view(self, job_id: str) -> dict[str, Any]:
        job = self.state.store().get(NS_DEPLOYMENTS, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no deployment {job_id!r}")
        out = {k: v for k, v in job.items() if k != "snapshot"}
        out["gateways"] = self.gateways(job) if job["revision"] else []
        if out["status"] == "in_progress" and all(g["status"] == "applied" for g in out["gateways"]):
            out["status"] = "deployed"  # the worker records it shortly
        return out

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        jobs = self.state.store().scan(NS_DEPLOYMENTS)[-limit:]
        return [{k: v for k, v in job.items() if k != "snapshot"} for _, job in reversed(jobs)]

    def reconcile(self) -> None:
        """One pass of the worker over open jobs: resume pending ones, complete finished ones."""
        store = self.state.store()
        for job_id, _ in store.scan(NS_OPEN_JOBS):
            with self.state.lock:
                job = store.get(NS_DEPLOYMENTS, job_id)
                if job is None:
                    self.state.commit([Op(NS_OPEN_JOBS, job_id, None)])
                    continue
                job = dict(job)
                if job["status"] == "pending":
                    log.info("deployment %s was left pending: resuming it", job_id)
                    self.execute(job_id)
                elif job["status"] == "in_progress":
                    pending = [g["name"] for g in self.gateways(job) if g["status"] == "pending"]
                    if not pending:
                        self._finish(job, "deployed", None)
                    elif time.time() - parse_iso(job["updated_at"]) > APPLY_TIMEOUT:
                        self._finish(job, "failed", f"gateways {', '.join(sorted(pending))} did not apply "
                                                    f"revision {job['revision']} within {APPLY_TIMEOUT:.0f} s")
                else:
                    self.state.commit([Op(NS_OPEN_JOBS, job_id, None)])
