"""gunicorn's settings that follow Custody's: it believes forwarded headers (X-Forwarded-Proto)
only from TRUSTED_PROXIES, the same list Django reads client addresses through. Empty means no
peer is believed. gunicorn loads this file from the working directory (the image's /app)."""

from config.env import env_list
from core.client_ip import parse_trusted_proxies

forwarded_allow_ips = ",".join(
    str(network) for network in parse_trusted_proxies(env_list("TRUSTED_PROXIES", []))
)
