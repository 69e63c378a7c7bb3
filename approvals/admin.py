import hashlib

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from agents.admin import AgentAdmin as AgentAdminBase
from agents.models import Agent
from approvals import approvers, policy, services
from approvals.models import (
    AccessRequest,
    Decision,
    Grant,
    Policy,
    PolicyProposal,
    PolicyRevision,
    Privilege,
    SigningKey,
)
from approvals.tokens import signing_key_rotate
from audit.services import Actor
from core.errors import DomainError


class ReadOnlyAdmin(admin.ModelAdmin):
    """Evidence-bearing rows change only through services, never by editing in admin."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


SHORTFALLS_LISTED = 5


def warn_shortfalls(request, shortfalls) -> None:
    """An admin message naming the agents whose requests could never gather their approvals."""
    if not shortfalls:
        return
    listed = "; ".join(str(shortfall) for shortfall in shortfalls[:SHORTFALLS_LISTED])
    more = len(shortfalls) - SHORTFALLS_LISTED
    messages.warning(
        request,
        f"Approval count cannot be met ({len(shortfalls)}): {listed}"
        + (f"; and {more} more" if more > 0 else "")
        + ". Such requests escalate to the team as soon as they are filed: add backup "
        "approvers or an approver group.",
    )


class ShortfallWarnings:
    """Admin list and change pages warn when an approval count cannot be met: every active
    agent against every enabled privilege on the list, the one object's scope on its page."""

    def shortfall_scope(self, obj):
        raise NotImplementedError

    def changelist_view(self, request, extra_context=None):
        if request.method == "GET":
            warn_shortfalls(
                request,
                approvers.approval_shortfalls(
                    agents=Agent.objects.filter(status=Agent.Status.ACTIVE),
                    privileges=Privilege.objects.filter(enabled=True),
                ),
            )
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        if request.method == "GET" and obj is not None:
            agents, privileges = self.shortfall_scope(obj)
            warn_shortfalls(
                request, approvers.approval_shortfalls(agents=agents, privileges=privileges)
            )
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Privilege)
class PrivilegeAdmin(ShortfallWarnings, admin.ModelAdmin):
    list_display = [
        "__str__",
        "risk",
        "max_duration_seconds",
        "approvals_needed",
        "approver_group",
        "slack_max_risk",
        "enabled",
    ]
    list_filter = ["risk", "enabled"]
    search_fields = ["resource", "action", "description"]
    filter_horizontal = ["toxic_with"]
    readonly_fields = ["approvals_needed"]

    @admin.display(description="Approvals needed")
    def approvals_needed(self, privilege: Privilege) -> str:
        """The one rule (the larger of the privilege's count and a policy's @approvals), with
        its reason, for a plain request."""
        if privilege.pk is None:
            return "Shown once saved."
        return approvers.count_rule(privilege, approvers.typical_outcome(privilege))

    def shortfall_scope(self, privilege: Privilege):
        return Agent.objects.filter(status=Agent.Status.ACTIVE), [privilege]

    def save_model(self, request, obj, form, change):
        services.privilege_save(
            privilege=obj, actor=Actor.for_user(request.user), created=not change
        )
        agents, privileges = self.shortfall_scope(obj)
        warn_shortfalls(
            request, approvers.approval_shortfalls(agents=agents, privileges=privileges)
        )


# The agent's admin lives in `agents`, which knows nothing of privileges: the approval-count
# warnings are added here, where both are known.
admin.site.unregister(Agent)


@admin.register(Agent)
class AgentAdmin(ShortfallWarnings, AgentAdminBase):
    readonly_fields = [*AgentAdminBase.readonly_fields, "approval_coverage"]

    @admin.display(description="Approval count")
    def approval_coverage(self, agent: Agent) -> str:
        if agent.pk is None:
            return "Checked once registered."
        shortfalls = approvers.approval_shortfalls(
            agents=[agent], privileges=Privilege.objects.filter(enabled=True)
        )
        if not shortfalls:
            return "Every privilege's approval count can be met."
        return "Cannot be met: " + "; ".join(
            f"{s.privilege_name} needs {s.required}, {s.eligible} may approve" for s in shortfalls
        )

    def shortfall_scope(self, agent: Agent):
        return [agent], Privilege.objects.filter(enabled=True)


REVIEW_FIRST = (
    "Nothing is saved yet. Below is what this change would have decided on the latest "
    "requests and which live grants it would end; save again to go ahead."
)


class PolicyTextInput(forms.Textarea):
    def __init__(self):
        super().__init__(attrs={"rows": 24, "cols": 100, "class": "vLargeTextField policy-text"})


class ReviewedPolicyForm(forms.ModelForm):
    """A policy change is shown before it is kept: the first save of a changed text or enabled
    flag stops with the simulation (`self.simulation`); saving the same change again goes on.
    `reviewed` carries a digest of what was shown, so a different change is shown again."""

    reviewed = forms.CharField(widget=forms.HiddenInput, required=False)
    simulation = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "kind" in self.fields:
            self.fields["kind"].required = False  # left out, a policy decides requests

    def clean_kind(self):
        return self.cleaned_data.get("kind") or Policy.Kind.REQUEST

    def clean_text(self):
        text = self.cleaned_data["text"]
        try:
            policy.validate_policy_text(text, self.policy_kind())
        except policy.PolicyTextError as exc:
            raise forms.ValidationError(["Cedar says: " + error for error in exc.errors])
        return text

    def target_policy(self) -> Policy | None:
        raise NotImplementedError

    def policy_kind(self) -> str:
        """The kind the text is validated for: the existing policy's (fixed), else the form's
        (declared before `text`, so already cleaned)."""
        target = self.target_policy()
        if target is not None:
            return target.kind
        return self.cleaned_data.get("kind") or Policy.Kind.REQUEST

    def clean(self):
        cleaned = super().clean()
        if self.errors or "text" not in cleaned:
            return cleaned
        if self.policy_kind() != Policy.Kind.REQUEST:
            # The simulation re-decides requests; a drift policy decides none of them.
            return cleaned
        target = self.target_policy()
        text, enabled = cleaned["text"], bool(cleaned.get("enabled"))
        if target is not None and (target.text, target.enabled) == (text, enabled):
            return cleaned  # a new name or description decides nothing differently
        version = target.version if target is not None else 0
        digest = hashlib.sha256(
            f"{target.pk if target else ''}\0{version}\0{enabled}\0{text}".encode()
        ).hexdigest()[:32]
        if self.data.get("reviewed") == digest:
            return cleaned
        self.simulation = services.policy_change_simulate(
            proposed=services.proposed_policies(
                policy_pk=target.pk if target else None,
                name=cleaned.get("name") or (target.name if target else ""),
                text=text,
                enabled=enabled,
            )
        )
        self.data = self.data.copy()
        self.data["reviewed"] = digest
        raise forms.ValidationError(REVIEW_FIRST, code="review_first")


class PolicyForm(ReviewedPolicyForm):
    class Meta:
        model = Policy
        fields = ["name", "kind", "description", "text", "enabled"]
        widgets = {"text": PolicyTextInput()}

    def target_policy(self) -> Policy | None:
        if self.instance.pk is None:
            return None
        return Policy.objects.filter(pk=self.instance.pk).first()


class PolicyRevisionInline(admin.TabularInline):
    model = PolicyRevision
    extra = 0
    can_delete = False
    readonly_fields = ["version", "enabled", "created_at", "created_by", "text"]

    def has_add_permission(self, request, obj=None):
        return False


def two_person_rule() -> bool:
    return settings.CUSTODY_POLICY_TWO_PERSON


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    """Policies change here directly, or, under the two-person rule, only through proposals
    (PolicyProposalAdmin) that another admin applies."""

    form = PolicyForm
    list_display = ["name", "kind", "version", "enabled", "updated_at", "updated_by"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "text"]
    inlines = [PolicyRevisionInline]
    actions = None  # bulk delete would bypass the audited service

    class Media:
        css = {"all": ["custody/admin.css"]}

    def get_readonly_fields(self, request, obj=None):
        fixed = ["version", "updated_at", "updated_by"]
        return fixed if obj is None else ["kind", *fixed]

    def has_add_permission(self, request):
        return not two_person_rule() and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return not two_person_rule() and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not two_person_rule() and super().has_delete_permission(request, obj)

    def render_change_form(self, request, context, *args, **kwargs):
        context["two_person_rule"] = two_person_rule()
        return super().render_change_form(request, context, *args, **kwargs)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "two_person_rule": two_person_rule()}
        return super().changelist_view(request, extra_context)

    def save_model(self, request, obj, form, change):
        services.policy_save(policy_row=obj, actor=Actor.for_user(request.user), created=not change)

    def response_add(self, request, obj, post_url_continue=None):
        self._reevaluation_note(request, obj)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        self._reevaluation_note(request, obj)
        return super().response_change(request, obj)

    def _reevaluation_note(self, request, policy_row: Policy):
        if policy_row.kind == Policy.Kind.DRIFT:
            self.message_user(request, "The drift policy set decides the very next tool call.")
            return
        self.message_user(
            request,
            "Live grants are decided again with the new policy set; those it no longer permits "
            "end now (reason policy_changed), as the audit log records.",
        )

    def delete_model(self, request, obj):
        services.policy_delete(policy_row=obj, actor=Actor.for_user(request.user))

    def delete_view(self, request, object_id, extra_context=None):
        """The confirmation shows what the policy set without this policy would decide."""
        extra_context = dict(extra_context or {})
        doomed = Policy.objects.filter(pk=object_id).first()
        if request.method == "GET" and doomed is not None and doomed.kind == Policy.Kind.REQUEST:
            extra_context["simulation"] = services.policy_change_simulate(
                proposed=services.policies_without(policy_pk=doomed.pk)
            )
        return super().delete_view(request, object_id, extra_context)


class PolicyProposalForm(ReviewedPolicyForm):
    class Meta:
        model = PolicyProposal
        fields = ["policy", "name", "kind", "description", "text", "enabled"]
        widgets = {"text": PolicyTextInput()}
        help_texts = {"policy": "The policy to change; leave empty to propose a new one."}

    def target_policy(self) -> Policy | None:
        return self.cleaned_data.get("policy")


class ProposalDecisionForm(forms.Form):
    reason = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), max_length=2000
    )


@admin.register(PolicyProposal)
class PolicyProposalAdmin(admin.ModelAdmin):
    """Two-person rule: one admin proposes, another applies (or anyone rejects, with a reason)."""

    form = PolicyProposalForm
    list_display = [
        "id",
        "name",
        "kind",
        "policy",
        "status",
        "proposed_by",
        "proposed_at",
        "decided_by",
    ]
    list_filter = ["status", "kind"]
    search_fields = ["name", "text"]
    actions = None

    class Media:
        css = {"all": ["custody/admin.css"]}

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return [
            "policy",
            "base_version",
            "name",
            "kind",
            "description",
            "text",
            "enabled",
            "status",
            "proposed_by",
            "proposed_at",
            "decided_by",
            "decided_at",
            "reason",
        ]

    def has_change_permission(self, request, obj=None):
        return False  # a proposal is applied or rejected, never edited

    def has_delete_permission(self, request, obj=None):
        return False

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        current = Policy.objects.filter(pk=request.GET.get("policy") or None).first()
        if current is not None and "text" not in initial:
            initial.update(
                name=current.name,
                kind=current.kind,
                description=current.description,
                text=current.text,
                enabled=current.enabled,
            )
        return initial

    def save_model(self, request, obj, form, change):
        services.policy_propose(proposal=obj, user=request.user)

    def response_add(self, request, obj, post_url_continue=None):
        self.message_user(
            request,
            f"Proposal #{obj.pk} is saved; nothing changes until another admin applies it.",
        )
        return redirect(reverse("admin:approvals_policyproposal_change", args=[obj.pk]))

    def get_urls(self):
        decide = self.admin_site.admin_view(self.decide_view)
        return [
            path("<int:proposal_id>/decide/", decide, name="approvals_policyproposal_decide"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        proposal = PolicyProposal.objects.filter(pk=object_id).first()
        extra = dict(extra_context or {})
        if proposal is not None and proposal.status == PolicyProposal.Status.PROPOSED:
            if proposal.kind == Policy.Kind.REQUEST:
                extra["simulation"] = self._simulation(proposal)
            extra["decision_form"] = ProposalDecisionForm()
            extra["own_proposal"] = proposal.proposed_by_id == request.user.pk
            extra["current_policy"] = proposal.policy
        return super().change_view(request, object_id, form_url, extra)

    def _simulation(self, proposal: PolicyProposal):
        return services.policy_change_simulate(
            proposed=services.proposed_policies(
                policy_pk=proposal.policy_id,
                name=proposal.name,
                text=proposal.text,
                enabled=proposal.enabled,
            )
        )

    def decide_view(self, request, proposal_id: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm("approvals.change_policy"):
            raise PermissionDenied("Applying or rejecting a proposal needs a policy admin.")
        proposal = get_object_or_404(PolicyProposal, pk=proposal_id)
        form = ProposalDecisionForm(request.POST)
        reason = form.cleaned_data["reason"] if form.is_valid() else ""
        try:
            if "apply" in request.POST:
                applied = services.policy_proposal_apply(proposal_id=proposal.pk, user=request.user)
                messages.success(
                    request,
                    f"Policy {applied.name} v{applied.version} is live. Live grants it no longer "
                    "permits end now (reason policy_changed).",
                )
            else:
                services.policy_proposal_reject(
                    proposal_id=proposal.pk, user=request.user, reason=reason
                )
                messages.success(request, f"Proposal #{proposal.pk} is rejected.")
        except DomainError as exc:
            context = {
                **self.admin_site.each_context(request),
                "title": f"Proposal #{proposal.pk} was not changed",
                "refusal": exc.message,
                "proposal": proposal,
                "opts": self.model._meta,
            }
            return TemplateResponse(
                request,
                "admin/approvals/policyproposal/refused.html",
                context,
                status=exc.status_code,
            )
        return redirect(reverse("admin:approvals_policyproposal_change", args=[proposal.pk]))


class DecisionInline(admin.TabularInline):
    model = Decision
    extra = 0
    can_delete = False
    readonly_fields = ["approver", "verdict", "channel", "comment", "created_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(AccessRequest)
class AccessRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "agent",
        "privilege",
        "task_id",
        "status",
        "policy_outcome",
        "approvals",
        "created_at",
        "decision_deadline",
    ]

    @admin.display(description="Approvals", ordering="approvals_required")
    def approvals(self, access_request: AccessRequest) -> str:
        return access_request.approvals_rule

    list_filter = ["status", "policy_outcome", "privilege"]
    search_fields = ["agent__name", "agent__spiffe_id", "task_id"]
    list_select_related = ["agent", "privilege"]
    inlines = [DecisionInline]


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "agent",
        "scope",
        "task_id",
        "issued_at",
        "expires_at",
        "revoked_at",
        "revoke_reason",
        "parent",
    ]
    list_filter = ["revoke_reason", "privilege"]
    search_fields = ["agent__name", "agent__spiffe_id", "task_id"]
    list_select_related = ["agent"]
    actions = ["revoke_grants"]

    def has_revoke_permission(self, request):
        return request.user.has_perm("approvals.change_grant") or request.user.is_superuser

    @admin.action(
        description="Revoke selected grants (and everything delegated from them)",
        permissions=["revoke"],
    )
    def revoke_grants(self, request, queryset):
        ended = 0
        for grant in queryset.order_by("pk"):
            try:
                services.grant_revoke(
                    grant=grant, actor=Actor.for_user(request.user), detail="revoked in admin"
                )
                ended += 1
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        self.message_user(request, f"{ended} grant(s) revoked.")


@admin.register(SigningKey)
class SigningKeyAdmin(ReadOnlyAdmin):
    list_display = ["kid", "algorithm", "state", "created_at"]
    exclude = ["encrypted_private_key"]
    actions = ["rotate"]

    def has_rotate_permission(self, request):
        return request.user.is_superuser

    @admin.action(
        description="Rotate: make a new current key (selection ignored)", permissions=["rotate"]
    )
    def rotate(self, request, queryset):
        key = signing_key_rotate(actor=Actor.for_user(request.user))
        self.message_user(request, f"New signing key {key.kid} is current.")


# Registered with the admin site by importing them here.
from approvals import admin_drift, admin_eligibility, admin_reviews  # noqa: E402, F401
