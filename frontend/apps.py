from django.apps import AppConfig


class FrontendConfig(AppConfig):
    name = "frontend"
    verbose_name = "Web UI"

    def ready(self):
        from frontend import auth  # noqa: F401 (connects the login-time receiver)
