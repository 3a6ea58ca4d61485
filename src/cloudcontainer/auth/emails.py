"""The texts of the mails the service sends."""

from __future__ import annotations

__all__ = ["ALREADY_REGISTERED", "PASSWORD_RESET", "VERIFY_EMAIL"]

VERIFY_EMAIL = (
    "Verify your cloudcontainer account",
    """Welcome to cloudcontainer.

Confirm this e-mail address by opening:

    {base_url}/verify-email?token={token}

or send the token to POST /api/auth/verify-email:

    {token}

The link expires in {hours} hours. If you did not sign up, ignore this mail.
""",
)

PASSWORD_RESET = (
    "Reset your cloudcontainer password",
    """Someone asked to reset the password of this cloudcontainer account.

Choose a new password by opening:

    {base_url}/reset-password?token={token}

or send the token with the new password to POST /api/auth/password-reset/confirm:

    {token}

The link expires in {hours} hours. If you did not ask for this, ignore this mail;
your password stays as it is.
""",
)

ALREADY_REGISTERED = (
    "Your cloudcontainer account",
    """Someone tried to sign up with this e-mail address, which already has an account.

If it was you, log in at {base_url}/ or reset your password there.
If it was not you, you can ignore this mail.
""",
)
