"""Project exceptions: each names the file/line/field/site that is wrong and what to do."""

from __future__ import annotations


class AfmError(Exception):
    """Base class of every error afm_jax raises on purpose."""


class DataError(AfmError):
    """Bad input data: names the file, the 1-based line number and the field when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.path, self.line, self.field, self.reason = path, line, field, message


class CheckpointError(AfmError):
    """A model directory or checkpoint that cannot be loaded as asked."""


class CompressionError(AfmError):
    """A compression request that cannot be carried out (bad site, rank or plan)."""

