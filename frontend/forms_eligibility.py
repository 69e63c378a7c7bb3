from datetime import UTC, datetime, time, timedelta

from django import forms

from approvals.models import Privilege


class EligibilityForm(forms.Form):
    """Make an agent eligible for a catalogue privilege, with optional limits."""

    privilege = forms.ModelChoiceField(
        queryset=Privilege.objects.filter(enabled=True), empty_label="Choose a privilege"
    )
    max_duration_minutes = forms.IntegerField(
        min_value=1,
        max_value=7 * 24 * 60,
        required=False,
        label="At most (minutes)",
        help_text="Empty: the privilege's own maximum.",
    )
    environment = forms.CharField(
        max_length=100, required=False, help_text="Empty: any environment."
    )
    ends_on = forms.DateField(
        required=False,
        label="Until (date, UTC)",
        help_text="Empty: no end date. Ends at the start of the next day, UTC.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    reason = forms.CharField(max_length=500, required=False)

    def limits(self) -> dict:
        data = self.cleaned_data
        minutes = data.get("max_duration_minutes")
        ends_on = data.get("ends_on")
        return {
            "max_duration_seconds": minutes * 60 if minutes else None,
            "environment": data.get("environment") or "",
            "ends_at": datetime.combine(ends_on + timedelta(days=1), time.min, tzinfo=UTC)
            if ends_on
            else None,
            "reason": data.get("reason") or "",
        }


class EligibilityDecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=[("approve", "Approve"), ("deny", "Deny")])
    comment = forms.CharField(max_length=1000, required=False)
