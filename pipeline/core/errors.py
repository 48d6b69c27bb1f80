"""The one exception type that commands turn into a one-line error, and a helper to shorten
causes."""


class PipelineError(Exception):
    """A problem the user can fix (a bad parameter, a missing file), reported without a
    traceback."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
