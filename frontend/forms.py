import re
from datetime import datetime, timedelta

from django import forms
from django.contrib.auth import get_user_model
from django.core import signing

from agents.selectors import agents_visible_to
from agents.services import time_zone_refusal
from approvals.models import Decision, Risk
from approvals.selectors import InboxFilter
from audit.verbs import verb_choices, verb_filter_refusal


class DecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=Decision.Verdict.choices)
    comment = forms.CharField(
        max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Recorded in the audit log.",
    )


# A datetime-local input only shows a value written as YYYY-MM-DDTHH:MM.
LOCAL_DATETIME = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class AuditFilterForm(forms.Form):
    # A text box, not a select of every agent: an estate of thousands made the page render
    # thousands of options on every page (most of its time at 2,000 agents).
    agent = forms.CharField(
        max_length=2048,
        required=False,
        label="Agent (SPIFFE ID or id)",
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    person = forms.CharField(max_length=150, required=False, label="Person (username)")
    verb = forms.CharField(
        max_length=64,
        required=False,
        help_text="A verb, or a family such as grant.*",
        widget=forms.TextInput(attrs={"list": "audit-verbs", "autocomplete": "off"}),
    )
    since = forms.DateTimeField(required=False, label="From", widget=LOCAL_DATETIME)
    until = forms.DateTimeField(required=False, label="Until", widget=LOCAL_DATETIME)
    access_request = forms.IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, label="Request #"
    )
    grant = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1, label="Grant #")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.verb_choices = verb_choices()

    def clean_agent(self):
        """The agent by id (as links to this page give it) or SPIFFE ID, among those the person
        may see; an agent outside their view reads as unknown (its existence is not leaked)."""
        wanted = self.cleaned_data["agent"]
        if wanted == "":
            return None
        visible = agents_visible_to(self.user)
        try:
            number = int(wanted)  # as the select it replaces read ids: " 7" and "07" name 7
        except ValueError:
            number = None
        if number is not None:
            agent = visible.filter(pk=number).first() if 0 < number < 2**63 else None
        elif wanted.startswith("spiffe://"):
            agent = visible.filter(spiffe_id=wanted).order_by("-pk").first()
        else:
            agent = None
        if agent is None:
            raise forms.ValidationError("No agent you can see has that id or SPIFFE ID.")
        return agent

    def clean_verb(self):
        verb = self.cleaned_data["verb"].strip()
        if verb and (refusal := verb_filter_refusal(verb)):
            raise forms.ValidationError(refusal)
        return verb

    def clean(self):
        period = super().clean()
        if period.get("since") and period.get("until") and period["since"] >= period["until"]:
            raise forms.ValidationError("'From' must be before 'Until'.")
        return period


class BackupApproverForm(forms.Form):
    # A username, not a list of everyone: the page does not enumerate the people in Custody.
    username = forms.CharField(max_length=150, label="Username of the new backup approver")

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        self.person = get_user_model().objects.filter(username=username, is_active=True).first()
        if self.person is None:
            raise forms.ValidationError("There is no active person with that username.")
        return username


class TimeZoneForm(forms.Form):
    # A text box with the zone names as suggestions: a select of ~600 zones is hard to use.
    time_zone = forms.CharField(
        max_length=64,
        label="Time zone",
        help_text="Times are shown in this zone, with UTC when you hover over them.",
        widget=forms.TextInput(attrs={"list": "time-zones", "autocomplete": "off"}),
    )

    def clean_time_zone(self):
        time_zone = self.cleaned_data["time_zone"].strip()
        if refusal := time_zone_refusal(time_zone):
            raise forms.ValidationError(refusal)
        return time_zone


# --- the inbox ---------------------------------------------------------------------------------

INBOX_AGES = {
    "1h": ("Older than 1 hour", timedelta(hours=1)),
    "1d": ("Older than 1 day", timedelta(days=1)),
    "7d": ("Older than 7 days", timedelta(days=7)),
}
CURSOR_SALT = "custody.inbox.cursor"
BAD_CURSOR = (
    "That page link is broken or was changed by hand; start again from the first page of the inbox."
)


class InboxFilterForm(forms.Form):
    """Search and filters of the inbox, as GET parameters (a URL people can share)."""

    q = forms.CharField(max_length=200, required=False, label="Search")
    risk = forms.ChoiceField(choices=[("", "Any risk"), *Risk.choices], required=False)
    agent = forms.IntegerField(min_value=1, required=False, widget=forms.Select)
    team = forms.IntegerField(min_value=1, required=False, widget=forms.Select)
    age = forms.ChoiceField(
        choices=[("", "Any age")] + [(key, label) for key, (label, _) in INBOX_AGES.items()],
        required=False,
    )
    task = forms.CharField(max_length=200, required=False, label="Task id")
    after = forms.CharField(max_length=400, required=False)

    choice_errors = {
        "agent": "Pick an agent from the list.",
        "team": "Pick a team from the list.",
    }

    def __init__(self, *args, agents=(), teams=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].widget.choices = [("", "Any agent")] + [
            (row["agent_id"], f"{row['agent__name']} ({row['pending']})") for row in agents
        ]
        self.fields["team"].widget.choices = [("", "Any team")] + [
            (row["agent__team_id"], f"{row['agent__team__name']} ({row['pending']})")
            for row in teams
        ]
        for name in ("agent", "team"):
            self.fields[name].error_messages.update(
                invalid=self.choice_errors[name], min_value=self.choice_errors[name]
            )

    def clean_after(self):
        """The keyset of the page before, signed so it cannot be made up."""
        after = self.cleaned_data["after"]
        if not after:
            return None
        try:
            deadline, request_id = signing.loads(after, salt=CURSOR_SALT)
            return datetime.fromisoformat(deadline), int(request_id)
        except (signing.BadSignature, TypeError, ValueError) as exc:
            raise forms.ValidationError(BAD_CURSOR) from exc

    def inbox_filter(self) -> InboxFilter:
        wanted = self.cleaned_data
        return InboxFilter(
            text=wanted.get("q", "").strip(),
            risk=wanted.get("risk", ""),
            agent_id=wanted.get("agent"),
            team_id=wanted.get("team"),
            task_id=wanted.get("task", "").strip(),
            older_than=INBOX_AGES[wanted["age"]][1] if wanted.get("age") else None,
        )


def inbox_cursor(after: tuple[datetime, int]) -> str:
    deadline, request_id = after
    return signing.dumps([deadline.isoformat(), request_id], salt=CURSOR_SALT, compress=True)


class RequestIdsField(forms.Field):
    """Request numbers from checkboxes; whether the person may act on them is the view's and
    the service's business."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value):
        chosen = []
        for number in value or []:
            if not re.fullmatch(r"[0-9]{1,18}", str(number)):
                raise forms.ValidationError("Selected requests are named by their numbers.")
            chosen.append(int(number))
        return chosen


class BulkDenyForm(forms.Form):
    """Deny the selected requests, or every one matching the inbox's filter up to `upto`."""

    reason = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Reason (recorded on each request)",
        error_messages={
            "required": "Give a reason for denying these requests; it is recorded on each of them."
        },
    )
    request = RequestIdsField(required=False)
    matching = forms.BooleanField(required=False)
    upto = forms.IntegerField(min_value=1, required=False)

    def clean(self):
        wanted = super().clean()
        if self.errors:
            return wanted
        if wanted.get("matching"):
            if not wanted.get("upto"):
                raise forms.ValidationError(
                    "Denying every matching request needs the inbox page it was asked from; "
                    "reload the inbox and try again."
                )
        elif not wanted.get("request"):
            raise forms.ValidationError("Select at least one request to deny.")
        return wanted
