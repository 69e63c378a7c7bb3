from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Evidence log"

    def ready(self) -> None:
        from audit.metrics import collect_audit_facts
        from core.metrics import register_facts

        register_facts(collect_audit_facts)
