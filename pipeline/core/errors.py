"""The exception type that commands turn into a one-line error (and its kind printed elsewhere),
and a helper to shorten causes."""


class PipelineError(Exception):
    """A problem the user can fix (a bad parameter, a missing file), reported without a
    traceback."""


class ReportedError(PipelineError):
    """A PipelineError whose line someone else prints: a torchrun worker hands its error to the
    launcher, which prints it once for all workers. The command exits 2 and prints nothing."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def first_sentence(exc: BaseException, most: int = 160) -> str:
    """The first sentence of `first_line(exc)`, at most `most` characters: for libraries whose one
    line is a paragraph of advice (torch.load's) that would not fit in a one-line error."""
    line = first_line(exc)
    head = line.split(". ", 1)[0].rstrip(".")
    return head if len(head) <= most else head[: most - 1].rstrip() + "…"
