from django.apps import AppConfig


class FrontendConfig(AppConfig):
    name = "frontend"
    verbose_name = "Web UI"

    def ready(self):
        from frontend import auth, sso  # noqa: F401 (connect their receivers)
