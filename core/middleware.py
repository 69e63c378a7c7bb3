from django.conf import settings
from django.core.signals import request_finished
from django.http import JsonResponse

from core.api_errors import is_oauth_view, oauth_error_body
from core.client_ip import from_trusted_proxy


class ForwardedProtoMiddleware:
    """The scheme the client used, as the TLS terminator saw it: X-Forwarded-Proto is believed
    only from a peer in TRUSTED_PROXIES (the chain client addresses are read through) and only
    when TRUST_X_FORWARDED_PROTO is on. Anyone else's header is dropped, so no client can claim
    https (or http) for itself. First in MIDDLEWARE: SecurityMiddleware's redirect and HSTS, and
    CSRF's origin check, read the scheme set here."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        proto = request.META.pop("HTTP_X_FORWARDED_PROTO", "")
        proto = proto.split(",")[-1].strip().lower()  # the hop nearest us, if several wrote it
        trusted = settings.TRUST_X_FORWARDED_PROTO and from_trusted_proxy(request)
        if trusted and proto in ("http", "https"):
            request.META["wsgi.url_scheme"] = proto  # what WSGIRequest.scheme reads
            scope = getattr(request, "scope", None)
            if scope is not None:
                scope["scheme"] = proto  # what ASGIRequest.scheme reads
        return self.get_response(request)


class BodySizeLimitMiddleware:
    """Refuse oversize bodies with 413 before anything parses them (DRF's parsers read the
    stream directly, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE alone would not apply)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if length < 0 or length > limit:
            message = (
                f"The request body is larger than {limit} bytes."
                if length > 0
                else "The Content-Length header is not a number."
            )
            envelope = {
                "code": "payload_too_large" if length > 0 else "invalid",
                "message": message,
                "fields": {},
            }
            status = 413 if length > 0 else 400
            if not is_oauth_view(request):
                return JsonResponse({"error": envelope}, status=status)
            response = JsonResponse(oauth_error_body(envelope, status), status=status)
            response["Cache-Control"] = "no-store"
            return response
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    """A strict CSP for every page, the admin and the API docs included: scripts and styles only
    from our static files (no inline script), no framing."""

    POLICY = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'"
    )

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", self.POLICY)
        return response


class PersonTimeZoneMiddleware:
    """Show times in the person's own time zone (their profile), UTC otherwise."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        import zoneinfo

        from django.utils import timezone

        zone = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            profile = getattr(user, "sponsor_profile", None)
            if profile is not None:
                try:
                    zone = zoneinfo.ZoneInfo(profile.time_zone)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    zone = None
        if zone:
            timezone.activate(zone)
        else:
            timezone.deactivate()
        return self.get_response(request)


class RequestIdMiddleware:
    """Give every request an id for its log lines (and the tasks it enqueues), answered back in
    X-Request-ID. A proxy's X-Request-ID is kept only when the peer is a trusted proxy and the
    id is well formed; otherwise anyone could forge or flood the id that ties lines together."""

    HEADER = "X-Request-ID"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from core import log_context
        from core.client_ip import client_ip, peer_is_trusted_proxy

        request_id = None
        if peer_is_trusted_proxy(request):
            request_id = log_context.valid_request_id(request.headers.get(self.HEADER))
        request.request_id = request_id or log_context.new_request_id()
        # Kept after the response (Django logs refused responses after the middleware ran);
        # request_finished clears it.
        log_context.replace({"request_id": request.request_id, "client_ip": client_ip(request)})
        response = self.get_response(request)
        response[self.HEADER] = request.request_id
        return response


class LogPersonMiddleware:
    """Name the signed-in person on the request's log lines (agents are named by their
    authentication, agents.authentication)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from core import log_context

        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            log_context.bind(person=user.get_username())
        return self.get_response(request)


def _forget_the_request(**kwargs) -> None:
    from core import log_context

    log_context.replace({})


request_finished.connect(_forget_the_request, dispatch_uid="custody-log-context-finished")
