"""Where a URL lives in the cache directory, temporary names, and per-key file locks.

Layout of a cache directory::

    cache_dir/ledger.sqlite            the ledger (plus -wal and -shm while in use)
    cache_dir/.locks/keys.lock         per-key download locks: one byte range per key (Linux)
    cache_dir/.locks/<key>.lock        per-key download locks elsewhere, present only while held
    cache_dir/.locks/open.lock         serializes the opening of the ledger
    cache_dir/.locks/users.lock        shared-locked by every open Cache (a cold start takes it alone)
    cache_dir/<key[:2]>/<key><ext>     the cached files
    cache_dir/<key[:2]>/<key><ext>.<pid>-<start>.<random>.tmp   downloads in progress

The key is the sha256 of the URL, so a path never contains any text of the URL except an
extension matching ``^\\.[A-Za-z0-9]{1,8}$``: no URL can name a path outside ``cache_dir``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import posixpath
import re
import secrets
import struct
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import filelock

try:
    import fcntl
except ImportError:  # Windows: filelock's locks (msvcrt, else lock files) instead, see PORTABLE
    fcntl = None  # type: ignore[assignment]

PORTABLE = fcntl is None
"""No ``fcntl`` here: locks are ``filelock.FileLock`` s (exclusive only, kept in ``.locks/``), and
every Cache opens the ledger as if another one were open (no cold-start sweep; dead processes'
reservations are still reclaimed by pid and start time)."""

LEDGER_NAME = "ledger.sqlite"
LOCKS_DIR = ".locks"
KEYS_LOCK = "keys.lock"

RANGE_LOCKS = fcntl is not None and sys.platform == "linux" and sys.maxsize > 2**32
"""Key locks are open-file-description byte-range locks (``F_OFD_SETLK``, Linux 3.15+) on the
one file ``.locks/keys.lock``, a byte per key, instead of a lock file per key created and removed
at each download: no file is created per download (on an ext4 without a journal, creating a file
where many were just removed cost 0.1-0.7 CPU ms). They behave as ``flock`` does: owned by the
open file description, so threads exclude each other (each lock opens the file anew), a child
of ``fork`` shares its parent's until it closes its copy, and a dead process's are released by
the kernel. Falls back to per-key ``flock`` files where the kernel refuses them (``EINVAL``)."""
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux: type, whence, start, len, pid
_RANGE_WORKS: dict[pathlib.Path, bool] = {}  # locks directory -> byte-range locks work there

_EXT = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
_FILE = re.compile(r"^(?P<key>[0-9a-f]{64})(?P<ext>\.[A-Za-z0-9]{1,8})?$")
_TMP = re.compile(
    r"^(?P<key>[0-9a-f]{64})(?:\.[A-Za-z0-9]{1,8})?\.(?P<pid>\d+)-(?P<start>\d+)\.[0-9a-f]+\.tmp$"
)
_SUBDIR = re.compile(r"^[0-9a-f]{2}$")
_HELD: set[int] = set()  # descriptors of the locks held by flocked() in this process


def _close_held_after_fork() -> None:
    # A forked child shares the parent's lock descriptions: closing its copies lets the
    # parent's release take effect even while the child lives.
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_after_fork)


def key_for(url: str) -> str:
    """The cache key of ``url``: the hex sha256 of its UTF-8 text (64 characters)."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def ext_for(url: str) -> str:
    """The extension kept on the cached file: the URL path's, if it is 1 to 8 ASCII letters
    or digits after a dot, else ``""`` (so ``.tar.gz`` keeps ``.gz``; ``?query`` is ignored)."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return ""
    ext = posixpath.splitext(path)[1]
    return ext if _EXT.match(ext) else ""


def path_for(root: pathlib.Path, url: str) -> pathlib.Path:
    """``root/<key[:2]>/<key><ext>``: where ``url`` lives under the cache directory ``root``."""
    key = key_for(url)
    return root / key[:2] / (key + ext_for(url))


def tmp_path_for(final: pathlib.Path, pid: int, start: int) -> pathlib.Path:
    """A fresh temporary name next to ``final``, naming its owner process (pid and start time)."""
    return final.with_name(f"{final.name}.{pid}-{start}.{secrets.token_hex(4)}.tmp")


def parse_file(name: str) -> str | None:
    """The key of a cached file's name, or None if the name is not one the cache writes."""
    m = _FILE.match(name)
    return m.group("key") if m else None


def parse_tmp(name: str) -> tuple[str, int, int] | None:
    """(key, owner pid, owner start time) of a temporary file's name, or None."""
    m = _TMP.match(name)
    return (m.group("key"), int(m.group("pid")), int(m.group("start"))) if m else None


def iter_entries(root: pathlib.Path) -> Iterator[os.DirEntry]:
    """Every regular file in the ``<key[:2]>`` subdirectories of ``root`` (cached or temporary)."""
    try:
        subdirs = [e for e in os.scandir(root) if _SUBDIR.match(e.name) and e.is_dir()]
    except FileNotFoundError:
        return
    for sub in subdirs:
        try:
            with os.scandir(sub.path) as it:
                yield from (e for e in it if e.is_file(follow_symlinks=False))
        except FileNotFoundError:
            continue


def find_file(root: pathlib.Path, key: str) -> pathlib.Path | None:
    """The cached file of ``key`` whatever its extension (for rows whose URL is unknown)."""
    sub = root / key[:2]
    for name in (key, *(p.name for p in sub.glob(key + ".*"))):
        if parse_file(name) == key and (sub / name).is_file():
            return sub / name
    return None


def tmp_files(root: pathlib.Path, key: str) -> list[pathlib.Path]:
    """The temporary files of ``key`` present now."""
    return [p for p in (root / key[:2]).glob(key + "*.tmp") if parse_tmp(p.name)]


def unlink(path: pathlib.Path) -> bool:
    """Remove ``path``; True if it was there."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _range_of(key: str, kind: int) -> bytes:
    """The ``struct flock`` of ``key``'s byte of ``keys.lock`` (``kind``: F_WRLCK or F_UNLCK)."""
    return _FLOCK.pack(kind, os.SEEK_SET, int(key[:15], 16), 1, 0)


def _range_lock(fd: int, key: str, wait: bool) -> bool:
    """Lock ``key``'s byte of ``keys.lock`` through ``fd``; False when another holds it."""
    arg = _range_of(key, fcntl.F_WRLCK)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, arg)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES) and not wait:
            return False
        raise
    return True


def _range_locks_work(locks: pathlib.Path) -> bool:
    """Whether byte-range locks work in the directory ``locks`` (tried once per process)."""
    if not RANGE_LOCKS:
        return False
    works = _RANGE_WORKS.get(locks)
    if works is None:
        fd = os.open(locks / KEYS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _range_lock(fd, "0" * 15, wait=False)
            works = True
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            works = False
        finally:
            os.close(fd)
        _RANGE_WORKS[locks] = works
    return works


def _open_range(locks: pathlib.Path, key: str, wait: bool) -> int | None:
    """Open ``keys.lock`` and lock ``key``'s byte through the new descriptor (registered in
    ``_HELD``); None, the descriptor closed, when another holds it and ``wait`` is False."""
    fd = os.open(locks / KEYS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if not _range_lock(fd, key, wait):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    _HELD.add(fd)
    return fd


def try_lock_key(locks: pathlib.Path, key: str) -> int | filelock.BaseFileLock | None:
    """Take the download lock of ``key`` (a cache key) without waiting: what holds it (give it
    to :func:`unlock_key`), or None when another thread or process holds it.

    Raises:
        OSError: the lock file cannot be created or locked.
    """
    if not _range_locks_work(locks):
        return try_flock(locks / f"{key}.lock")
    return _open_range(locks, key, wait=False)


def unlock_key(locks: pathlib.Path, key: str, held: int | filelock.BaseFileLock) -> None:
    """Release the lock of ``key`` taken by :func:`try_lock_key` or :func:`locked_key`."""
    if isinstance(held, filelock.BaseFileLock) or not _range_locks_work(locks):
        unflock(locks / f"{key}.lock", held)
        return
    _HELD.discard(held)
    # Unlock before closing: a forked child keeps a copy of the description until its after-fork
    # hook closes it, and closing this copy alone would leave the range locked until then.
    try:
        fcntl.fcntl(held, fcntl.F_OFD_SETLK, _range_of(key, fcntl.F_UNLCK))
    finally:
        os.close(held)


@contextlib.contextmanager
def locked_key(locks: pathlib.Path, key: str) -> Iterator[None]:
    """Hold the download lock of ``key`` for the block, waiting for it.

    Raises:
        OSError: the lock file cannot be created or locked.
    """
    if not _range_locks_work(locks):
        with flocked(locks / f"{key}.lock", remove=True):
            yield
        return
    fd = _open_range(locks, key, wait=True)
    try:
        yield
    finally:
        unlock_key(locks, key, fd)


@contextlib.contextmanager
def flocked(path: pathlib.Path, *, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing) for the block.

    The file is opened on every call, so threads of one process exclude each other too. With
    ``remove=True`` the file is unlinked on release, and a waiter that wakes up on an unlinked
    file opens the new one and waits again, so lock files never pile up.

    Raises:
        OSError: the lock file cannot be created.
    """
    if PORTABLE:  # no unlink on release: a lock file may be another holder's lock (soft locks)
        with filelock.FileLock(str(path), thread_local=False):
            yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    _HELD.add(fd)
    try:
        yield
    finally:
        if remove:
            unlink(path)
        _release_flock(fd)


def try_flock(path: pathlib.Path) -> int | filelock.BaseFileLock | None:
    """Take the exclusive lock of :func:`flocked` without waiting.

    Returns:
        int | filelock.BaseFileLock | None: what holds the lock (a descriptor; a FileLock where
        :data:`PORTABLE`): give it to :func:`unflock`; None when another thread or process
        holds it.

    Raises:
        OSError: the lock file cannot be created.
    """
    if PORTABLE:
        lock = filelock.FileLock(str(path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return None
        return lock
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                os.close(fd)
                return None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        if same:
            _HELD.add(fd)
            return fd
        os.close(fd)  # unlinked by its last holder: lock the new file


def unflock(path: pathlib.Path, fd: int | filelock.BaseFileLock) -> None:
    """Release a lock taken by :func:`try_flock`, removing its file (as ``flocked(remove=True)``)."""
    if isinstance(fd, filelock.BaseFileLock):
        fd.release()
        return
    unlink(path)
    _release_flock(fd)


def _release_flock(fd: int) -> None:
    """Unlock and close a descriptor of :func:`flocked` or :func:`try_flock`. The explicit unlock
    releases the lock even while a forked child still holds a copy of the description."""
    _HELD.discard(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def try_lock_shared(path: pathlib.Path) -> tuple[int, bool]:
    """Open ``path`` and lock it: exclusively if nobody else holds it, else shared.

    Call it while holding :func:`flocked` on another file, so that the two steps are atomic.

    Returns:
        tuple[int, bool]: the file descriptor (now holding a shared lock; close it to release)
        and whether this caller was alone (the exclusive lock succeeded). Where
        :data:`PORTABLE`, no lock and never alone.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if PORTABLE:
        return fd, False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            alone = False
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd, alone
