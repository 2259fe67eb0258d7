"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class HwqError(Exception):
    """A mistake in what the user asked for; the message says what and what to do."""

    exit_code = 2


class MismatchError(HwqError):
    """Hardware and reference disagree; the message says where."""

    exit_code = 1
