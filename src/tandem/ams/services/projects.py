"""API projects: create, read, replace, delete.

Context paths: a project may not take a context path (with overlapping hosts)
that another project already has, at creation or replacement, so that any
set of projects can be deployed together; deploying re-checks against the
snapshots actually deployed in the environment (a project edited since its
deployment may still hold its old path there). A deployed project cannot be
deleted: undeploy it first.
"""

from __future__ import annotations

from typing import Any

from tandem.ams.api_errors import ApiError, invalid
from tandem.ams.app_state import NS_PROJECTS, AmsState
from tandem.ams.models import Project, routes_conflict
from tandem.ams.services.environments import deployed_in
from tandem.store import Op, Store


def project_doc(project: Project) -> dict[str, Any]:
    return project.model_dump(mode="json")


class ProjectService:
    def __init__(self, state: AmsState) -> None:
        self.state = state

    def list(self) -> list[dict[str, Any]]:
        return [v for _, v in self.state.store().scan(NS_PROJECTS)]

    def get(self, name: str) -> dict[str, Any]:
        doc = self.state.store().get(NS_PROJECTS, name)
        if doc is None:
            raise ApiError(404, "not_found", f"no project named {name!r}")
        return dict(doc)

    def check_routes(self, store: Store, doc: dict[str, Any]) -> None:
        for name, other in store.scan(NS_PROJECTS):
            if name != doc["name"] and routes_conflict(other, doc):
                raise invalid("context_path", f"{doc['context_path']!r} is already the context path of "
                                              f"project {name!r} (with overlapping hosts)")

    def create(self, project: Project) -> dict[str, Any]:
        doc = project_doc(project)
        with self.state.lock:
            store = self.state.store()
            if store.get(NS_PROJECTS, project.name) is not None:
                raise ApiError(409, "exists", f"project {project.name!r} already exists", "name")
            self.check_routes(store, doc)
            self.state.commit([Op(NS_PROJECTS, project.name, doc)])
        return doc

    def replace(self, name: str, project: Project) -> dict[str, Any]:
        if project.name != name:
            raise invalid("name", f"{project.name!r} differs from the project in the path ({name!r}); "
                                  "projects cannot be renamed")
        doc = project_doc(project)
        with self.state.lock:
            store = self.state.store()
            if store.get(NS_PROJECTS, name) is None:
                raise ApiError(404, "not_found", f"no project named {name!r}")
            self.check_routes(store, doc)
            self.state.commit([Op(NS_PROJECTS, name, doc)])
        return doc

    def delete(self, name: str) -> None:
        with self.state.lock:
            store = self.state.store()
            if store.get(NS_PROJECTS, name) is None:
                raise ApiError(404, "not_found", f"no project named {name!r}")
            envs = deployed_in(store, name)
            if envs:
                raise ApiError(409, "deployed", f"project {name!r} is deployed to {', '.join(envs)}: "
                                                "undeploy it first")
            self.state.commit([Op(NS_PROJECTS, name, None)])
