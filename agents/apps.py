from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents and workload identity"

    def ready(self) -> None:
        from agents import (
            openapi,  # noqa: F401  (registers the workload-identity security scheme)
            receivers,  # noqa: F401  (connects the approval-rights receivers)
        )
