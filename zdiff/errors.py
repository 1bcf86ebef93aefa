"""The one exception type users see.

Every problem caused by user input (a spec, a checkpoint directory, a CLI flag) is a
``ZdiffError``: the CLI prints its message on one line and exits with status 2. Bugs in
zdiff itself stay ordinary exceptions with tracebacks, so the two never get confused.
"""


class ZdiffError(Exception):
    """A problem with what the user asked for, phrased so they can fix it."""


class SpecError(ZdiffError):
    """A spec field is missing, mistyped, unknown or out of range."""

    def __init__(self, path: str, value, reason: str, line: int | None = None, source: str | None = None):
        self.path, self.value, self.reason, self.line, self.source = path, value, reason, line, source
        where = ""
        if source is not None and line is not None:
            where = f" ({source}:{line})"
        elif line is not None:
            where = f" (line {line})"
        shown = "" if value is _MISSING else f", got {_short_repr(value)}"
        super().__init__(f"{path}: {reason}{shown}{where}")

    def located(self, line: int | None, source: str | None) -> "SpecError":
        """The same error with a YAML location attached (the validator knows paths, the loader lines)."""
        return SpecError(self.path, self.value, self.reason, self.line or line, source)


def _short_repr(value, limit: int = 80) -> str:
    """repr of a user value, cut so that a 1 MB string still gives a one-line, readable error."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
MISSING = _MISSING


class CheckpointError(ZdiffError):
    """A checkpoint directory cannot be read or imported."""


class ZdiffWarning(UserWarning):
    """Something zdiff did on the user's behalf that they should know about (a dropped impossible id, a file
    that is missing but not needed yet). The CLI prints each as one `zdiff: warning: ...` line."""


class GraphCaptureError(ZdiffError):
    """A decode step shape could not be captured as a CUDA/HIP graph (the message names the shape and the op)."""
