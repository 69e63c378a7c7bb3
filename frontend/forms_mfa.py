"""allauth's passkey answers, hardened: a malformed answer (a field missing, a wrong type) is
refused as a wrong passkey, where allauth's parser would raise a KeyError (a 500)."""

from allauth.mfa.webauthn.forms import AuthenticateWebAuthnForm, ReauthenticateWebAuthnForm
from django import forms

MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _checked(clean):
    def clean_credential(self):
        try:
            return clean(self)
        except MALFORMED as exc:
            raise forms.ValidationError(
                "That is not an answer from a passkey.", code="incorrect_code"
            ) from exc

    return clean_credential


class PasskeyForm(AuthenticateWebAuthnForm):
    """The second factor at sign-in."""

    clean_credential = _checked(AuthenticateWebAuthnForm.clean_credential)


class PasskeyReauthenticateForm(ReauthenticateWebAuthnForm):
    """The second factor again: the step-up, and before changing one's factors."""

    clean_credential = _checked(ReauthenticateWebAuthnForm.clean_credential)
