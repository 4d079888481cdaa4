"""Wakes the watch loop as soon as something lands in the watched directory, so a dropped folder is served at
once instead of at the next poll.

Linux inotify through ctypes: no dependency (the ``watchdog`` package would add a thread and its own event
objects for what is here one file descriptor), and nothing is parsed: any event only means "scan now", the scan
itself decides what is new. Where inotify is missing (another OS, a libc without it, the per-user watch limit
reached) the waker still answers :meth:`DirectoryWaker.wait` with its timeout, so the loop falls back to polling;
the loop polls anyway every ``poll_s``, which also covers events lost to a queue overflow or a network file system.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
from collections.abc import Iterable

log = logging.getLogger(__name__)

# <sys/inotify.h>: a file written and closed, moved in, or a directory (label folder) created in a watched one.
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_MASK = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


def _inotify() -> tuple[int, ctypes.CDLL] | None:
    """An inotify file descriptor and the libc that made it, or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the symbols already loaded: libc's, without a library search
        init = libc.inotify_init1
    except (OSError, AttributeError):
        return None
    fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
    return (fd, libc) if fd >= 0 else None


class DirectoryWaker:
    """``watch(dirs)`` before listing them (an event after the listing then cannot be missed), ``wait(timeout)``
    between scans, ``interrupt()`` to end a wait from another thread, ``close()`` once."""

    def __init__(self) -> None:
        found = _inotify()
        self._fd, self._libc = found if found else (-1, None)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._broken = False

    @property
    def active(self) -> bool:
        """True while inotify watches the directories (False: the loop is polling only)."""
        return self._fd >= 0 and not self._broken

    def watch(self, dirs: Iterable[str]) -> None:
        """Watch ``dirs`` (again: the kernel keeps one watch per directory, and a folder renamed in over an old
        one is a new directory that needs its own)."""
        if not self.active:
            return
        add = self._libc.inotify_add_watch  # type: ignore[union-attr]
        for d in dirs:
            if add(self._fd, os.fsencode(d), _MASK) < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOENT, errno.ENOTDIR):  # gone or replaced since it was listed: the next scan sees
                    continue
                # ENOSPC: fs.inotify.max_user_watches reached, and anything else: poll from now on, say so once.
                self._broken = True
                log.warning("cannot watch %s for new files (%s); polling instead", d, os.strerror(err))
                return

    def wait(self, timeout: float) -> bool:
        """Block until something lands in a watched directory (True), ``timeout`` seconds pass or
        :meth:`interrupt` is called (False). Pending events are consumed."""
        fds = [self._wake_r, self._fd] if self.active else [self._wake_r]
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        for fd in ready:
            try:
                while os.read(fd, 65536):
                    pass
            except BlockingIOError:
                pass
        return self._fd in ready and self._fd >= 0

    def interrupt(self) -> None:
        """End the current or the next :meth:`wait` now (from any thread)."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full or closed: a wake-up is pending anyway, or nobody waits any more

    def close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1
