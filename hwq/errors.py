"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class HwqError(Exception):
    """A mistake in what the user asked for; the message says what and what to do."""

    exit_code = 2


class MismatchError(HwqError):
    """Hardware and reference disagree; the message says where."""

    exit_code = 1


def raise_interrupt(error: BaseException) -> None:
    """Re-raise the KeyboardInterrupt `error` comes from, if any. Code that turns the
    exceptions of other code into messages calls this first: an exception raised while
    Ctrl-C unwinds (torch.fx's cleanup asserts its tracer state, a user's module may
    wrap it) is the interrupt, not a mistake to report."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            raise error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
