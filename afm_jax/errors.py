"""Project exceptions: each names the file/line/field/site that is wrong and what to do.

An error can be spelled twice: its message speaks Python (`on_bad_lines='skip'`), as the library
is called; `cli` speaks the command line (`--on-bad-lines skip`), and `afm-jax` prints that one
(`cli_message`). Errors raised by the CLI itself speak the command line in both.
"""

from __future__ import annotations


class AfmError(Exception):
    """Base class of every error afm_jax raises on purpose.

    message: for a Python caller. cli: the same for a command-line user (flags instead of
    argument names), when they differ.
    """

    def __init__(self, message: str = "", *, cli: str | None = None):
        super().__init__(message)
        self.cli = cli


def cli_message(error: BaseException) -> str:
    """The message of `error` as a command-line user should read it."""
    return getattr(error, "cli", None) or str(error)


class DataError(AfmError):
    """Bad input data: names the file, the 1-based line number and the field when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None, cli: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        # without a line, `field` names an argument (Python words): the cli text names the flag
        cli_where = where if line is not None else where[:1] if path is not None else []
        cli_prefix = (", ".join(cli_where) + ": ") if cli_where else ""
        super().__init__(prefix + message, cli=None if cli is None else cli_prefix + cli)
        self.path, self.line, self.field, self.reason = path, line, field, message


class CheckpointError(AfmError):
    """A model directory or checkpoint that cannot be loaded as asked."""


class CompressionError(AfmError):
    """A compression request that cannot be carried out (bad site, rank or plan)."""


class OutputError(AfmError):
    """An output that may not be written: it exists (and overwriting was not asked for), or it
    is one of the run's inputs."""
