"""Only one controller acts on a fleet: an exclusive lock on a file beside the routing file it writes.

`flock` belongs to the open file, not the process's memory of it: the kernel drops it when the holder exits or
dies however it dies (no lease to expire, no stale lock left by a crash), and a second controller asking for it is
refused at once. The holder writes who it is into the file for the operator (`cat` it); the lock is what counts.

flock works between processes on one machine and on shared filesystems that support it (local volumes, CephFS, NFS
v4 with its lock manager); it is no election across machines over a filesystem that ignores it. On Kubernetes run
one controller (a Deployment with `replicas: 1` and the `Recreate` strategy, so an old pod is gone before a new one
starts; deploy/README.md), and the lock guards what that leaves: two controllers started by hand on one volume.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if it is free; True when this holder has it (now or already), never waits."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        note = (
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        """What the holder wrote into the file (for a log line); "" when nothing can be read."""
        try:
            return self.path.read_text(errors="replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
