"""The writer lock of a results store: one run at a time writes a store.

A writer holds an exclusive ``flock`` on ``RESULTS.h5.lock`` (the kernel drops it when the process ends, however
it ends); a second run on the same store is refused with the first one's process and host, since two writers
consolidating in turn would each drop the other's cases.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import StoreError

log = logging.getLogger(__name__)


class WriterLock:
    """The exclusive right to write one store, held on ``RESULTS.h5.lock`` until :meth:`release` (or the end of
    the process). The file names its holder, for the message a second writer gets."""

    def __init__(self, path: Path, fd: int | None):
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, store_path: Path) -> WriterLock:
        path = store_path.with_name(store_path.name + ".lock")
        me = f"pid {os.getpid()} on {socket.gethostname()}"
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, as on file systems without locks
            return cls(path, None)
        try:
            # Never through a symbolic link: one planted at the lock's name could make a run write another file.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError("the lock file is a symbolic link; remove it", path=path) from exc
            raise StoreError(f"cannot create the lock file ({exc.strerror or exc})", path=path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                if holder.startswith(f"{me},"):
                    raise StoreError(
                        "this process has these results open for writing already: close that "
                        "ResultStore first (ResultStore.open(..., create=False) only reads)",
                        path=store_path,
                    ) from exc
                raise StoreError(
                    f"another isodose run is writing these results ({holder or 'holder unknown'}); "
                    "wait for it to end, or write to another --out",
                    path=store_path,
                ) from exc
            log.warning(
                "%s: cannot lock the results (%s); make sure no other run writes them at the same time",
                store_path,
                exc.strerror or exc,
            )
            return cls(path, None)
        os.ftruncate(fd, 0)
        os.write(fd, f"{me}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
