"""Queued messages, the AMS side: redrive.

The messages themselves live on the gateways (a `delivery` policy with
`mode = "queued"`); the AMS only tells the gateways of an environment to put a
project's dead messages back in their queues. `redrive` adds one to the
project's counter in the environment record (`record["redrive"][project]`)
and bumps the revision in the same commit, exactly as a deployment does, so
held long polls wake and every gateway of the environment, including one that
polls later, gets a document whose project carries the new counter
(`tandem.model.document.build_document`). A gateway redrives when the counter
it applies is greater than the last one it acted on.
"""

from __future__ import annotations

import logging
from typing import Any

from tandem.ams.api_errors import ApiError
from tandem.ams.app_state import NS_PROJECTS, AmsState
from tandem.ams.services.environments import channel, env_op, get_env, redrive_counters

log = logging.getLogger("tandem.ams.messages")


class MessageService:
    def __init__(self, state: AmsState) -> None:
        self.state = state

    def redrive(self, project: str, environment: str) -> dict[str, Any]:
        """Ask every gateway of `environment` to redrive `project`'s dead messages: 404 without
        such a project, 409 `not_deployed` when it is not deployed to `environment`."""
        with self.state.lock:
            store = self.state.store()
            if store.get(NS_PROJECTS, project) is None:
                raise ApiError(404, "not_found", f"no project named {project!r}")
            record = get_env(store, environment)
            if project not in record["projects"]:
                raise ApiError(409, "not_deployed", f"project {project!r} is not deployed to environment "
                                                    f"{environment!r}: nothing to redrive there")
            counters = redrive_counters(record)
            counters[project] = counters.get(project, 0) + 1
            record.update(revision=int(record["revision"]) + 1, redrive=counters)
            self.state.commit([env_op(record)], channel(environment))
        log.info("redrive %d of %s in %s at revision %d", counters[project], project, environment,
                 record["revision"])
        return {"project": project, "environment": environment, "redrive": counters[project],
                "revision": record["revision"]}
