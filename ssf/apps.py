from django.apps import AppConfig


class SsfConfig(AppConfig):
    name = "ssf"
    verbose_name = "Shared Signals (revocation events for resource servers)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ssf import receivers  # noqa: F401  (writes the outbox when grants end)
