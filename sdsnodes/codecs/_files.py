"""The one gate every codec passes before it opens a local path: regular files only.

Opening a FIFO blocks until a writer appears (forever, in a DataLoader worker); a directory,
a character device (``/dev/zero``, ``/dev/urandom``: endless bytes) or a socket is no media file
either. :func:`regular_file` looks with ``os.stat`` (which never opens the file) and refuses
anything but a regular file, so no codec (Pillow, PyAV, numpy, torch) ever opens one.
"""

from __future__ import annotations

import os
import stat

from sdsnodes.errors import NotAFile

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str) -> str:
    """``path`` itself, once ``os.stat`` (following symlinks) shows a regular file.

    Args:
        path (str): a local path.

    Returns:
        str: ``path``, unchanged.

    Raises:
        FileNotFoundError: nothing at ``path`` (or a dangling symlink): a missing file.
        NotAFile: ``path`` holds a NUL byte, or names a directory, FIFO, device or socket.
        OSError: ``stat`` failed otherwise (e.g. permission denied on a parent directory).
    """
    if "\x00" in path:
        raise NotAFile(repr(path), "the path holds a NUL byte")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), f"mode {mode:o}")
        raise NotAFile(path, f"not a regular file: {kind}")
    return path
