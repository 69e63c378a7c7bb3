from datetime import UTC, datetime, time, timedelta

from django import forms

from approvals.models import Eligibility, Privilege


def _ends_on(ends_at: datetime | None):
    """The form's date for an end moment: the last day it still holds (UTC)."""
    if ends_at is None:
        return None
    return (ends_at.astimezone(UTC) - timedelta(microseconds=1)).date()


class EligibilityLimitsForm(forms.Form):
    """An eligibility's optional limits; empty means none beyond the privilege's."""

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

    def __init__(self, *args, current: Eligibility | None = None, **kwargs):
        """With `current`, the fields start from its limits, and a limit left as shown keeps
        its exact value (an end moment or a duration the form's units cannot express)."""
        self.current = current
        if current is not None:
            kwargs.setdefault(
                "initial",
                {
                    "max_duration_minutes": -(-current.max_duration_seconds // 60)
                    if current.max_duration_seconds
                    else None,
                    "environment": current.environment,
                    "ends_on": _ends_on(current.ends_at),
                },
            )
            kwargs.setdefault("auto_id", f"id_eligibility_{current.pk}_%s")
        super().__init__(*args, **kwargs)

    def limits(self) -> dict:
        data = self.cleaned_data
        minutes = data.get("max_duration_minutes")
        ends_on = data.get("ends_on")
        seconds = minutes * 60 if minutes else None
        ends_at = (
            datetime.combine(ends_on + timedelta(days=1), time.min, tzinfo=UTC) if ends_on else None
        )
        current = self.current
        if current is not None:
            if minutes and minutes == self.initial.get("max_duration_minutes"):
                seconds = current.max_duration_seconds
            if ends_on and ends_on == self.initial.get("ends_on"):
                ends_at = current.ends_at
        return {
            "max_duration_seconds": seconds,
            "environment": data.get("environment") or "",
            "ends_at": ends_at,
            "reason": data.get("reason") or "",
        }


class EligibilityForm(EligibilityLimitsForm):
    """Make an agent eligible for a catalogue privilege, with optional limits."""

    privilege = forms.ModelChoiceField(
        queryset=Privilege.objects.filter(enabled=True), empty_label="Choose a privilege"
    )
    field_order = ["privilege", "max_duration_minutes", "environment", "ends_on", "reason"]


class EligibilityDecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=[("approve", "Approve"), ("deny", "Deny")])
    comment = forms.CharField(max_length=1000, required=False)
