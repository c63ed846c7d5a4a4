"""Outputs that are written whole or not at all, and never clobber without being asked.

Every directory or file afm_jax writes as a result (model directories, exports, score files)
goes through `atomic_dir` or `atomic_file`: the content is written into a temporary sibling
(`OUT.partial`, same filesystem) and renamed into place once complete, so a reader sees the
previous output or the finished new one, never half of one. An existing output is refused unless
`overwrite`; an output that is, or contains, one of the run's inputs is refused always.

`train` keeps its `OUT.partial` when it fails: that is where its checkpoints are, and the same
command resumes from them (see `afm_jax.train.train`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from afm_jax.errors import OutputError

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary sibling an output is written into before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _same_or_inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(path: str | os.PathLike, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = (), *, flag: str = "out",
                 training: bool = False) -> Path:
    """`path` if a run may write it: refuses an existing output without `overwrite`, and an
    output that is or contains one of `inputs` (resolved, so `m` and `./m/` are the same) even
    with it. Unless `training` (train resumes from it), also an `OUT.partial` that holds an
    interrupted training run's checkpoints: writing OUT would delete them. flag: how the
    output is named in the messages (`--out`)."""
    out = Path(path).expanduser()
    resolved = out.resolve()
    for given in inputs:
        if given is None:
            continue
        src = Path(given).expanduser().resolve()
        if _same_or_inside(src, resolved):
            what = "is" if src == resolved else "contains"
            raise OutputError(
                f"{flag}={str(path)!r} {what} the input {str(given)!r}; writing it would destroy "
                f"the input: choose another {flag}",
                cli=f"--{flag} {path} {what} the input {given}; writing it would destroy the "
                    f"input (even with --overwrite): choose another --{flag}")
    if not training and (partial_path(out) / "state").is_dir():
        raise OutputError(
            f"{partial_path(path)} holds an interrupted training run's checkpoints; resume it "
            f"with the same train call, remove it, or choose another {flag}",
            cli=f"--out {path}: {partial_path(path)} holds an interrupted training run's "
                f"checkpoints; resume it with the same `afm-jax train` command, remove it, or "
                f"choose another --{flag}")
    if (out.is_symlink() or out.exists()) and not overwrite:
        raise _exists(out, flag)
    return out


def _exists(path: Path, flag: str = "out") -> OutputError:
    kind = "directory" if path.is_dir() else "file"
    return OutputError(f"{flag}={str(path)!r}: the {kind} exists; pass overwrite=True to replace "
                       f"it, or choose another {flag}",
                       cli=f"--{flag} {path}: the {kind} exists; pass --overwrite to replace it, "
                           f"or choose another --{flag}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def commit(tmp: str | os.PathLike, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Rename the finished `tmp` to `path`; an existing `path` (allowed by `overwrite`) is moved
    aside first and removed after, so `path` is the old output or the new one at every moment
    except between two renames, when it is absent (never half written)."""
    tmp, path = Path(tmp), Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:  # appeared while the output was being written
            raise _exists(path)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        _remove(old)
        os.rename(path, old)
        os.rename(tmp, path)
        _remove(old)
    else:
        os.rename(tmp, path)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty directory to write the output `path` into; rename it to `path` when the
    block completes. On an exception (an interrupt included) it is removed and `path` is as it
    was. (train writes its OUT.partial itself, resumes from it and `commit`s it.)

    In a multi-process run every process enters the block with the same directory (orbax writes
    from all of them); process 0 prepares and renames it, the others wait at barriers.
    """
    from afm_jax.distributed import is_primary, sync

    path = Path(path)
    check_output(path, overwrite)
    tmp = partial_path(path)
    if is_primary():
        _remove(tmp)  # a killed run's leftovers: never half of this output
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    sync(f"afm_jax.atomic_dir.{path.name}.start")
    try:
        yield tmp
        sync(f"afm_jax.atomic_dir.{path.name}.done")
        if is_primary():
            commit(tmp, path, overwrite)
        sync(f"afm_jax.atomic_dir.{path.name}.renamed")
    except BaseException:
        if is_primary():
            _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write the file `path` as; rename it into place when the
    block completes, remove it on an exception (`path` then is as it was)."""
    path = Path(path)
    if path.is_dir():  # never replace a directory by a file, --overwrite or not
        raise OutputError(f"{path}: is a directory; choose a file name",
                          cli=f"--out {path}: is a directory; choose a file name")
    check_output(path, overwrite)
    tmp = partial_path(path)
    _remove(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if path.exists() and not overwrite:  # appeared while the file was being written
            raise _exists(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
