from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Privileges, requests and grants"

    def ready(self) -> None:
        from approvals import receivers  # noqa: F401  (audits approver-group membership)
        from approvals.metrics import collect_approval_facts
        from core.metrics import register_facts

        register_facts(collect_approval_facts)
