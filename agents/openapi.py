"""The OpenAPI security scheme of agents and resource servers: a bearer workload identity."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class WorkloadIdentityScheme(OpenApiAuthenticationExtension):
    target_class = "agents.authentication.WorkloadIdentityAuthentication"
    name = "workloadIdentity"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An agent's or a resource server's JWT-SVID (or OIDC token) from a "
            "registered trust domain, for the audience CUSTODY_AUDIENCE. Never a Custody access "
            "token: those are for resource servers.",
        }
