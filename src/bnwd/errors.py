"""Errors that the CLI turns into one-line messages instead of tracebacks."""


class BnwdError(Exception):
    """A problem the user can fix; the CLI prints `bnwd: <message>` and exits with `exit_code`."""

    exit_code = 1


class ConfigError(BnwdError):
    """Bad command line or config value (unknown key, wrong type, out of range)."""

    exit_code = 2


class DataError(BnwdError):
    """Missing, corrupt, hostile or malformed dataset files."""


class CheckpointError(BnwdError):
    """A checkpoint that is corrupt or belongs to another config."""


class DivergenceError(BnwdError):
    """The loss became NaN or infinite."""
