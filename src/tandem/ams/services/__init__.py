"""Domain services of the AMS: each validates, then commits through the Store."""

from __future__ import annotations

from tandem.ams.app_state import AmsState
from tandem.ams.services.audit import AuditService
from tandem.ams.services.consumers import ConsumerService
from tandem.ams.services.deployments import DeploymentService
from tandem.ams.services.ha_view import HAView
from tandem.ams.services.messages import MessageService
from tandem.ams.services.projects import ProjectService
from tandem.ams.services.registry import RegistryService
from tandem.ams.services.reports import GatewayReports
from tandem.ams.services.sessions import SessionService
from tandem.ams.services.tokens import TokenService
from tandem.ams.services.users import UserService


class Services:
    def __init__(self, state: AmsState, audit_retention_days: int = 90) -> None:
        self.state = state
        self.projects = ProjectService(state)
        self.consumers = ConsumerService(state)
        self.reports = GatewayReports()  # in memory: live telemetry of the gateways, never stored
        self.registry = RegistryService(state, self.reports)
        self.deployments = DeploymentService(state, self.registry)
        self.tokens = TokenService(state)
        self.messages = MessageService(state)
        self.users = UserService(state)
        self.audit = AuditService(state, audit_retention_days)
        self.sessions = SessionService(state)
        self.ha_view = HAView(state)


__all__ = ["AuditService", "ConsumerService", "DeploymentService", "GatewayReports", "MessageService", "ProjectService", "RegistryService",
           "Services", "SessionService", "TokenService", "UserService"]
