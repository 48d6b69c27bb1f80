"""The one exception type that stage commands turn into a one-line error."""


class PipelineError(Exception):
    """A problem the user can fix (a bad parameter, a missing file), reported without a traceback."""
