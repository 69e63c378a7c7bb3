from django.apps import AppConfig


class BrokersConfig(AppConfig):
    name = "brokers"
    verbose_name = "Credential brokers (real credentials for systems without Custody tokens)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from brokers import (  # noqa: F401  (the registry, the outbox writer, the gauges)
            metrics,
            postgresql,
            receivers,
        )
