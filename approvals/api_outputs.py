"""The shapes the agents' and people's API answers with, for the OpenAPI document.

The views build their answers (`apis.request_output` and friends); these serializers describe
them, one named component each, and tests/approvals/test_schema_fuzz.py validates every answer
the live server gives against them, so a field renamed in one place and not the other fails."""

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from approvals.models import AccessRequest, DriftFlag


@extend_schema_serializer(component_name="Intent")
class IntentSerializer(serializers.Serializer):
    action = serializers.CharField(max_length=200)
    target = serializers.CharField(max_length=500)
    justification = serializers.CharField(max_length=2000)


class PolicyDecisionSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(
        choices=AccessRequest.Outcome.values,
        help_text="What policy said when the request was filed.",
    )
    policies = serializers.ListField(
        child=serializers.CharField(), help_text="The ids of the policies that decided."
    )
    reason = serializers.CharField(allow_blank=True)
    final = serializers.CharField(
        allow_blank=True, help_text="Why the request ended as it did (empty while pending)."
    )


class ApprovalsRuleSerializer(serializers.Serializer):
    privilege_asks = serializers.IntegerField()
    policy_asks = serializers.IntegerField()
    policy = serializers.CharField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)


class TokenFieldsMixin(serializers.Serializer):
    access_token = serializers.CharField(help_text="An ES256 JWT (`typ: at+jwt`).")
    token_type = serializers.ChoiceField(choices=["Bearer"])
    expires_in = serializers.IntegerField(
        min_value=0, help_text="Seconds the access token has left (RFC 6749 §5.1)."
    )


@extend_schema_serializer(component_name="GrantCredentialState")
class GrantCredentialStateSerializer(serializers.Serializer):
    """A brokered credential's state as the grant shows it (never the secret)."""

    state = serializers.ChoiceField(
        choices=["provisioning", "live", "destroy_pending", "destroyed", "failed"],
        help_text="`destroy_pending`: the grant ended and the credential is not yet confirmed "
        "destroyed on its system (revocation pending).",
    )
    name = serializers.CharField()
    expires_at = serializers.DateTimeField()
    destroyed_at = serializers.DateTimeField(allow_null=True)


def grant_credential_state(grant) -> dict | None:
    """The grant's brokered credential, if the brokers app made one (its reverse relation:
    approvals never imports brokers)."""
    credential = getattr(grant, "brokered_credential", None)
    if credential is None:
        return None
    return {
        "state": credential.state,
        "name": credential.name,
        "expires_at": credential.expires_at,
        "destroyed_at": credential.destroyed_at,
    }


class RequestGrantSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    scope = serializers.CharField()
    expires_at = serializers.DateTimeField(help_text="When the grant ends.")
    active = serializers.BooleanField()
    token_url = serializers.CharField(help_text="POST here for a fresh access token.")
    access_token = serializers.CharField(
        allow_null=True,
        help_text="Only when this answer minted one (an automatic approval's 201); otherwise "
        "null, and `token_url` mints one.",
    )
    token_type = serializers.ChoiceField(choices=["Bearer"], allow_null=True)
    expires_in = serializers.IntegerField(
        min_value=0, allow_null=True, help_text="Seconds the access token has left."
    )
    credential = GrantCredentialStateSerializer(
        allow_null=True, help_text="The brokered credential, when one was made (null otherwise)."
    )


@extend_schema_serializer(component_name="AccessRequest")
class AccessRequestSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=AccessRequest.Status.choices)
    privilege = serializers.CharField()
    task_id = serializers.CharField()
    intent = IntentSerializer()
    duration_seconds = serializers.IntegerField()
    decision = PolicyDecisionSerializer()
    approvals_required = serializers.IntegerField()
    approvals_received = serializers.IntegerField()
    approvals_rule = ApprovalsRuleSerializer()
    decision_deadline = serializers.DateTimeField(
        help_text="Until when people may decide; past it a pending request expires."
    )
    created_at = serializers.DateTimeField()
    grant = RequestGrantSerializer(allow_null=True)


class ApprovalProgressSerializer(serializers.Serializer):
    summary = serializers.CharField()
    approved_by = serializers.ListField(child=serializers.CharField())
    denied_by = serializers.ListField(child=serializers.CharField())
    waiting_for = serializers.ListField(child=serializers.CharField())
    initiator = serializers.CharField(allow_null=True)
    cannot_be_met = serializers.BooleanField()
    you_may_decide = serializers.BooleanField()
    why_not = serializers.CharField(allow_null=True)


@extend_schema_serializer(component_name="PendingApproval")
class PendingApprovalSerializer(AccessRequestSerializer):
    agent = serializers.CharField(help_text="The agent's SPIFFE ID.")
    sponsor = serializers.CharField()
    progress = ApprovalProgressSerializer()


class PendingApprovalListSerializer(serializers.Serializer):
    results = PendingApprovalSerializer(many=True)


@extend_schema_serializer(component_name="DecidedRequest")
class DecidedRequestSerializer(AccessRequestSerializer):
    progress = ApprovalProgressSerializer()


@extend_schema_serializer(component_name="AccessToken")
class AccessTokenSerializer(TokenFieldsMixin):
    scope = serializers.CharField()
    grant_id = serializers.IntegerField()
    grant_expires_at = serializers.DateTimeField(help_text="When the grant ends.")


@extend_schema_serializer(component_name="TokenExchangeIssued")
class TokenExchangeIssuedSerializer(AccessTokenSerializer):
    issued_token_type = serializers.ChoiceField(
        choices=["urn:ietf:params:oauth:token-type:access_token"]
    )
    request_id = serializers.IntegerField()


@extend_schema_serializer(component_name="TokenExchangePending")
class TokenExchangePendingSerializer(AccessRequestSerializer):
    request_id = serializers.IntegerField()
    agent = serializers.CharField(help_text="The sub-agent's SPIFFE ID: the request is its own.")
    poll = serializers.CharField(help_text="The sub-agent polls here with its own SVID.")


class DriftSerializer(serializers.Serializer):
    flag = serializers.IntegerField()
    kinds = serializers.ListField(child=serializers.CharField())
    outcome = serializers.ChoiceField(choices=DriftFlag.Outcome.values)
    policies = serializers.ListField(child=serializers.CharField())


@extend_schema_serializer(component_name="ToolCallRecorded")
class ToolCallRecordedSerializer(serializers.Serializer):
    sequence = serializers.IntegerField(help_text="The `tool.called` event's place in the log.")
    recorded_at = serializers.DateTimeField()
    drift = DriftSerializer(allow_null=True)


@extend_schema_serializer(component_name="Introspection")
class IntrospectionSerializer(serializers.Serializer):
    """RFC 7662: `{"active": false}` alone for anything not honoured; the rest when active."""

    active = serializers.BooleanField()
    token_type = serializers.CharField(required=False)
    iss = serializers.CharField(required=False)
    sub = serializers.CharField(required=False)
    aud = serializers.CharField(required=False, allow_null=True)
    scope = serializers.CharField(required=False, allow_null=True)
    exp = serializers.IntegerField(required=False, help_text="Seconds since the epoch.")
    iat = serializers.IntegerField(required=False, help_text="Seconds since the epoch.")
    jti = serializers.CharField(required=False)
    grant_id = serializers.IntegerField(required=False)
    task_id = serializers.CharField(required=False)
    agent = serializers.CharField(required=False)
    grant_expires_at = serializers.IntegerField(
        required=False, help_text="Seconds since the epoch, like `exp`."
    )
    act = serializers.JSONField(required=False, help_text="RFC 8693 actor chain.")
    chain = serializers.ListField(child=serializers.CharField(), required=False)
    delegation_depth = serializers.IntegerField(required=False)


class JwkSerializer(serializers.Serializer):
    kty = serializers.CharField()
    kid = serializers.CharField()
    alg = serializers.CharField(required=False)
    use = serializers.CharField(required=False)
    crv = serializers.CharField(required=False)
    x = serializers.CharField(required=False)
    y = serializers.CharField(required=False)
    status = serializers.CharField(required=False)


@extend_schema_serializer(component_name="JwkSet")
class JwkSetSerializer(serializers.Serializer):
    keys = JwkSerializer(many=True)
