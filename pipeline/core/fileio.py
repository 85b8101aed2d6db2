"""Atomic file writes: every output of the pipeline goes to a temporary name beside it, then ``os.replace``.

A reader (or a re-run after a kill, a full disk, or torchrun stopping the job) sees either the old
file or the complete new one, never a half-written file. One temporary-name scheme for all writers:
``.NAME.PID.XXXXXXXX.tmpSUFFIX`` beside ``NAME`` (hidden; ``SUFFIX`` is the target's, e.g.
``.nii.gz``, for libraries that pick the format from it; ``PID`` is the writing process). The
temporary is removed on any error, including ``KeyboardInterrupt``/``SystemExit``; one left by a
SIGKILL is removed by the next write of the same target once its process is gone. A failed write
raises :class:`~pipeline.core.errors.OutputError` naming the final file.

* :func:`atomic_write` (``write(tmp)`` then rename), :func:`atomic_write_text`, :func:`atomic_write_bytes`;
* :func:`atomic_outputs` — several files (and folders) written under temporary names and renamed into
  place together, in the order they were added, when the ``with`` block ends without error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.core.errors import OutputError, writing

__all__ = [
    "Outputs",
    "atomic_outputs",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_bytes",
    "remove_stale_temps",
]

_MARK = ".tmp"


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


def _writer_pid(name: str, path: Path) -> int | None:
    """The process that made ``name``, if it is a temporary of ``path`` in this module's scheme."""
    prefix = f".{path.name}."
    if not name.startswith(prefix) or not name.endswith((_MARK + _suffix(path), _MARK)):
        return None
    pid, dot, _ = name[len(prefix) :].partition(".")
    return int(pid) if dot and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not safe while writer threads run.
_UMASK = _umask()


def _new_temp(path: Path, folder: bool = False) -> Path:
    """A new hidden file (or empty folder) beside ``path``, in the one temporary-name scheme.

    mkstemp/mkdtemp create it private (0600/0700); it gets the mode a plain ``open`` would give
    (0666/0777 less the umask), so a mask or ``model.zip`` can be shared like any other file.
    """
    prefix = f".{path.name}.{os.getpid()}."
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=_MARK, dir=path.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
        return tmp
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=_MARK + _suffix(path), dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    return Path(name)


def _discard(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` whose writer is gone (a SIGKILL mid-write leaves them).

    Temporaries of other targets, and those of live processes (a concurrent writer), are kept.

    Returns:
        The removed paths.
    """
    path = Path(path)
    try:
        with os.scandir(path.parent) as entries:  # once per write: names only, no stat
            names = [e.name for e in entries if e.name.startswith(f".{path.name}.")]
    except OSError:
        return []
    stale = [path.parent / n for n in names if (pid := _writer_pid(n, path)) is not None and not _alive(pid)]
    for p in stale:
        _discard(p)
    return stale


class Outputs:
    """Files and folders staged under temporary names by :func:`atomic_outputs` (see there)."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target), in rename order

    def temp(self, path: str | os.PathLike, folder: bool = False) -> Path:
        """Reserve a new temporary file (or empty folder) for ``path``; it is renamed to ``path`` at
        the end of the block. The writer fills it; nothing is written to it here.

        Raises:
            OutputError: the folder of ``path`` cannot be created or written.
        """
        path = Path(os.path.abspath(path))
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path)
            tmp = _new_temp(path, folder)
        self._staged.append((tmp, path))
        return tmp

    def write(self, path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
        """Reserve a temporary for ``path`` and call ``write(tmp)`` on it.

        Returns:
            The temporary path.

        Raises:
            OutputError: the write fails; names ``path``. A ``RuntimeError`` counts as a failed write:
                writers such as ITK and torch report a full disk that way, without an errno.
        """
        path = Path(os.path.abspath(path))
        tmp = self.temp(path)
        with writing(path):
            try:
                write(tmp)
            except RuntimeError as exc:
                raise OutputError(f"{path}: cannot write ({' '.join(str(exc).split())[:160]})") from None
        return tmp

    def folder(self, path: str | os.PathLike) -> Path:
        """A new empty temporary folder that replaces the folder ``path`` as a whole."""
        return self.temp(path, folder=True)

    def _commit(self) -> None:
        while self._staged:
            tmp, path = self._staged[0]
            with writing(path):
                if tmp.is_dir() and path.is_dir():  # a folder cannot replace a non-empty one: swap
                    old = _new_temp(path, folder=True)
                    os.replace(path, old)  # onto the empty folder just made
                    os.replace(tmp, path)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, path)
            self._staged.pop(0)

    def _rename_in(self, exc: OutputError) -> OutputError:
        """``exc`` naming the final paths instead of staged folders (a file written inside one)."""
        msg = str(exc)
        for tmp, path in self._staged:
            msg = msg.replace(str(tmp), str(path))
        return exc if msg == str(exc) else OutputError(msg)

    def _discard_all(self) -> None:
        for tmp, _ in self._staged:
            _discard(tmp)
        self._staged.clear()


@contextlib.contextmanager
def atomic_outputs() -> Iterator[Outputs]:
    """Stage several outputs and rename them into place together when the block ends without error.

    Example (an image and its label appear only when both were written)::

        with atomic_outputs() as out:
            out.write(image_path, lambda tmp: nib.save(image, tmp))
            out.write(label_path, lambda tmp: nib.save(label, tmp))

    On any error (or ``BaseException``) in the block, every temporary is removed and no target
    changes; an error naming a file inside a staged folder names it inside the final folder.

    Raises:
        OutputError: a staged output cannot be written or renamed; names the final file.
    """
    outputs = Outputs()
    try:
        yield outputs
        outputs._commit()
    except OutputError as exc:
        err = outputs._rename_in(exc)
        outputs._discard_all()
        if err is exc:
            raise
        raise err from None
    except BaseException:
        outputs._discard_all()
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a new temporary path beside ``path``, then rename it to ``path``.

    The temporary keeps ``path``'s suffix (``.csv``, ``.nii.gz``, ...) for writers that pick the
    format from it, and is unique per call, so concurrent writers never share it.

    Returns:
        ``path`` (absolute).

    Raises:
        OutputError: the file cannot be written (full disk, read-only folder); names the file.
    """
    with atomic_outputs() as out:
        out.write(path, write)
    return Path(os.path.abspath(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
