"""Files the package reads and writes: regular-file checks, atomic output, leftovers of killed runs.

Every file meddeblur writes goes through :func:`atomic_write` or :func:`atomic_path`, so an interrupted run never
leaves a half-written output behind; a leftover temporary file of a killed run is recognised by its name and
removed by :func:`remove_stale_temporaries`. Inputs are opened through :func:`open_regular`, which never blocks on a
FIFO or device. Nothing here decodes images (:mod:`meddeblur.io.decode`) or judges whose a file is
(:mod:`meddeblur.io.ownership`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from meddeblur.errors import NotFound, TooLarge, UserError

__all__ = [
    "check_regular_file",
    "open_regular",
    "check_creatable_folder",
    "check_name_length",
    "atomic_write",
    "atomic_path",
    "remove_quietly",
    "remove_stale_temporaries",
    "read_whole",
    "resolved_path",
    "source_stamp",
    "file_identity",
]

_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(path: Path, mode: int) -> UserError:
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    if kind == "a folder":
        return UserError(f"{path}: is a folder, not an image file; give an image file", value=path)
    return UserError(f"{path}: is {kind}, not a regular file; give an image file", value=path)


def _open_error(path: Path, exc: OSError) -> UserError:
    """The message for a file that cannot be opened (or stat-ed) for reading."""
    if isinstance(exc, PermissionError):
        return UserError(
            f"{path}: permission denied; make the file readable (chmod +r) or copy it somewhere readable", value=path
        )
    if exc.errno == errno.ELOOP:
        return UserError(f"{path}: symbolic link loop; fix or remove the link", value=path)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return NotFound(
                f"{path}: broken symbolic link (its target {target} does not exist); fix or remove the link", value=path
            )
        return NotFound(f"{path}: no such file; check the path", value=path)
    return UserError(f"{path}: cannot open ({exc.strerror or exc}); check the file", value=path)


def check_regular_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` if it is (a link to) a regular file; else a :class:`UserError` saying what it is.

    Never opens the file, so a FIFO or device is refused without blocking on it.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _open_error(path, exc) from None
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    return path


def open_regular(path: Path) -> IO[bytes]:
    """Open a regular file for reading without ever blocking on a FIFO or device swapped in meanwhile."""
    check_regular_file(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def resolved_path(path: Path) -> Path:
    """``path`` with links and ``..`` resolved, or made absolute where a symbolic link loop stops that."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
        return Path(os.path.abspath(path))


def source_stamp(path: Path) -> dict[str, Any]:
    """What the regular file ``path`` is now: its size, modification time (UTC, ISO 8601) and SHA-256 digest.

    Recorded in every output's provenance and the run log, it is what proves an output was made from the file now at
    an input's path; the digest decides (a copy keeps content but not the time, ``touch`` the reverse).
    """
    with open_regular(path) as f:
        info = os.fstat(f.fileno())
        hasher = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):  # hashlib.file_digest needs Python 3.11
            hasher.update(block)
        digest = hasher.hexdigest()
    mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(info.st_mtime)) + f".{info.st_mtime_ns % 10**9:09d}Z"
    return {"size": info.st_size, "mtime": mtime, "sha256": digest}


#: A file modified less than this long before it is read may still be being written: it is read once more after
#: this long, and refused if it changed meanwhile. (File times advance by clock ticks of a few milliseconds.)
SETTLE_SECONDS = 0.05


def read_whole(path: Path, f: IO[bytes], limit: int) -> bytes:
    """The bytes of the open file ``f`` (of ``path``), read so that they are one version of it, never a mix.

    The file is read twice, and a third time :data:`SETTLE_SECONDS` later if it was modified just before; any
    difference (in content, size, modification or change time) means another program is writing it, and it is
    refused (UserError). Files over ``limit`` bytes are refused before reading (:class:`~meddeblur.errors.TooLarge`).
    Not even this can tell a file whose writer stopped half-way for longer than that from a complete one: write
    inputs by renaming a finished file into place, as meddeblur writes its outputs.
    """
    first = os.fstat(f.fileno())
    if first.st_size > limit:
        raise TooLarge(
            f"{path}: file of {first.st_size:,} bytes, more than an image within this tool's pixel limit holds; "
            "downscale or tile it, or export it alone (one page)",
            value=path,
        )
    try:
        data = f.read(limit + 1)
        same = _read_again(f, data)
        last = os.fstat(f.fileno())
        if same and time.time_ns() - max(last.st_mtime_ns, first.st_mtime_ns) < SETTLE_SECONDS * 1e9:
            time.sleep(SETTLE_SECONDS)
            same, last = _read_again(f, data), os.fstat(f.fileno())
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc}); check the file and the disk", value=path) from None
    if not same or len(data) > limit or _stamp(first) != _stamp(last):
        raise UserError(
            f"{path}: changed while being read (another program is writing it); read it again once it is complete", value=path
        )
    return data


def _read_again(f: IO[bytes], data: bytes) -> bool:
    f.seek(0)
    return f.read(len(data) + 1) == data


def file_identity(path: Path) -> tuple[int, ...]:
    """Which file is at ``path`` and its state (device, inode, size, modification and change time): equal before
    and after reading means no other program replaced or rewrote it meanwhile, without reading it again."""
    try:
        return _stamp(os.stat(path))
    except OSError as exc:
        raise _open_error(path, exc) from None


def _stamp(info: os.stat_result) -> tuple[int, ...]:
    # ctime too: a rewrite that restores size and mtime (touch -r) still moves the change time.
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


# --------------------------------------------------------------------------- atomic output


#: Longest file name (in bytes) the temporary name may have: the limit of nearly every file system (ext4, XFS, APFS, NTFS).
NAME_MAX = 255


def check_name_length(path: str | os.PathLike[str]) -> None:
    """UserError if the file name of ``path`` is longer than :data:`NAME_MAX` bytes (no file system would take it)."""
    size = len(os.fsencode(Path(path).name))
    if size > NAME_MAX:
        raise UserError(
            f"{path}: file name of {size} bytes is longer than the {NAME_MAX} a file system takes; shorten the "
            "input's name or choose another output format",
            value=path,
        )


def _temp_name(path: Path) -> Path:
    # Hidden (so meddeblur.io.listing skips it), unique, naming the writing process (so a later run can tell
    # a leftover from a kill from another process's work in progress), and ending in the real suffix
    # so that libraries choosing an encoder by extension pick the right one.
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= 16 else ""
    tail = f".tmp-{os.getpid()}-{secrets.token_hex(6)}{suffix}"
    name = f".{path.name}{tail}"
    if len(os.fsencode(name)) > NAME_MAX:
        # A long output name (up to the file system's 255 bytes) must stay writable: keep as much of it as fits
        # before a digest of the whole name, so temporaries of different outputs still differ.
        digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
        room = NAME_MAX - len(os.fsencode(f".~{digest}{tail}"))
        name = f".{os.fsencode(path.name)[:room].decode('utf-8', 'ignore')}~{digest}{tail}"
    return path.with_name(name)


_TEMP_PATTERN = re.compile(r"\..+\.tmp-(?:(?P<pid>\d+)-)?[0-9a-f]{12}(?:\.[^.]*)?", re.ASCII | re.DOTALL)
#: A temporary file older than this is a leftover even if its process id is in use again (ids are recycled).
STALE_TEMP_SECONDS = 3600


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: keep its file
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete this tool's own temporary files left in ``folder`` by a killed run (``SIGKILL``, power loss).

    Only regular files named like :func:`_temp_name`'s are considered, and only those whose
    writing process no longer exists, or that are older than :data:`STALE_TEMP_SECONDS`; a
    concurrent run's file in progress is left alone. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_PATTERN.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        pid = match.group("pid")
        dead = pid is not None and int(pid) != os.getpid() and not _process_alive(int(pid))
        if dead or now - info.st_mtime > STALE_TEMP_SECONDS:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


#: Errors of the device written to rather than of the program: reported naming the file.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _write_error(path: Path, exc: OSError) -> UserError:
    hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "check the disk"
    return UserError(
        f"{path}: cannot write ({exc.strerror or exc}); {hint} or choose another output path; nothing was left half-written"
    )


def check_creatable_folder(folder: str | os.PathLike[str], option: str) -> None:
    """UserError unless ``folder`` exists as a folder or can be created (no file in the way of its path)."""
    folder = Path(folder)
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{folder}: cannot create this folder, {parent} is a file; choose another {option}")


def _prepare_parent(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name for the output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{path}: cannot create folder {path.parent}, a file is in the way; choose another output path") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied creating {path.parent}; choose another output path") from None
    if not path.parent.is_dir():
        raise UserError(f"{path}: {path.parent} is not a folder; choose another output path")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc}); choose another output path") from None
    _fsync_dir(path.parent)


def remove_quietly(tmp: Path) -> None:
    """Delete ``tmp`` if it exists; an error doing so is ignored (cleanup must not hide the original error)."""
    with contextlib.suppress(OSError):
        tmp.unlink()


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, path: Path) -> Iterator[None]:
    """Remove ``tmp`` if the block fails; a full or failing disk becomes a :class:`UserError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        remove_quietly(tmp)
        if exc.errno in _WRITE_ERRNOS:
            raise _write_error(path, exc) from None
        raise
    except BaseException:
        remove_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; it replaces ``path`` only if the block succeeds.

    Parent folders are created. On an exception the temporary file is removed and
    ``path`` is left untouched. Text modes default to UTF-8.
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write only supports write modes, got {mode!r}")
    path = Path(path)
    _prepare_parent(path)
    tmp = _temp_name(path)
    binary = "b" in mode
    try:
        # os.open with 0o666 honours the umask, unlike tempfile.mkstemp's 0o600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc}); choose another output path") from None
    try:
        f = os.fdopen(fd, mode, encoding=None if binary else (encoding or "utf-8"), newline=newline)
    except BaseException:
        os.close(fd)
        remove_quietly(tmp)
        raise
    with _removed_on_failure(tmp, path):
        with f:
            yield f
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
        _commit(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for libraries that write by file name.

    The temporary name keeps ``path``'s suffix (e.g. ``torch.save``, ``savefig``).
    If the block succeeds the file is synced and moved onto ``path``; otherwise it
    is removed and ``path`` is left untouched.
    """
    path = Path(path)
    _prepare_parent(path)
    tmp = _temp_name(path)
    with _removed_on_failure(tmp, path):
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"atomic_path: nothing was written to {tmp} for {path}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # Some writers (safetensors) create 0600 files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _commit(tmp, path)
