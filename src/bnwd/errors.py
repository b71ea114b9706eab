"""Errors that the CLI turns into one-line messages instead of tracebacks.

Catch `BnwdError` for all of them. A bad argument value (`ConfigError`, raised by the config,
`theory`, `exact`, `invariance` and the data loader's size checks) is also a `ValueError`, so
library code that catches `ValueError` catches it. `DataError` and `CheckpointError` are not:
their argument (a path) was fine, the files it names are missing, corrupt or hostile.
"""


def one_line(e: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception on one line (whitespace collapsed), cut at `limit` characters."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


class BnwdError(Exception):
    """A problem the user can fix; the CLI prints `bnwd: <message>` and exits with `exit_code`."""

    exit_code = 1


class ConfigError(BnwdError, ValueError):
    """Bad command line, config value or function argument (unknown key, wrong type, out of range)."""

    exit_code = 2


class DataError(BnwdError):
    """Missing, corrupt, hostile or malformed dataset files."""


class CheckpointError(BnwdError):
    """A checkpoint that is corrupt or belongs to another config."""


class DivergenceError(BnwdError):
    """The loss became NaN or infinite."""
