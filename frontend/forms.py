from django import forms
from django.contrib.auth import get_user_model

from agents.selectors import agents_visible_to
from agents.services import time_zone_refusal
from approvals.models import Decision
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
    agent = forms.ModelChoiceField(queryset=None, required=False, empty_label="Any agent")
    person = forms.CharField(max_length=150, required=False, label="Person (username)")
    verb = forms.CharField(
        max_length=64,
        required=False,
        help_text="A verb, or a family such as grant.*",
        widget=forms.TextInput(attrs={"list": "audit-verbs", "autocomplete": "off"}),
    )
    since = forms.DateTimeField(required=False, label="From", widget=LOCAL_DATETIME)
    until = forms.DateTimeField(required=False, label="Until", widget=LOCAL_DATETIME)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = agents_visible_to(user).order_by("name")
        self.verb_choices = verb_choices()

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
