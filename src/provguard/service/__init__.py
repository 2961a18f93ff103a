"""The HTTP service (FastAPI) and its dashboard; see :mod:`provguard.service.app`."""

from provguard.service.app import (
    ServiceSettings,
    ServiceState,
    create_app,
    current_client,
    require_app,
    require_auditor,
)
from provguard.service.auth import ApiKeys, Client, add_key

__all__ = [
    "ApiKeys",
    "Client",
    "ServiceSettings",
    "ServiceState",
    "add_key",
    "create_app",
    "current_client",
    "require_app",
    "require_auditor",
]
