from django.conf import settings
from django.http import JsonResponse


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
            return JsonResponse(
                {
                    "error": {
                        "code": "payload_too_large" if length > 0 else "invalid",
                        "message": message,
                        "fields": {},
                    }
                },
                status=413 if length > 0 else 400,
            )
        return self.get_response(request)
