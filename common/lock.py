"""One writer per folder: an OS lock (``flock``) on ``<folder>/.lock``, held while a command writes there.

The OS drops the lock when its holder exits, also on ``kill -9``, so a crashed holder never blocks the next
run; the file it leaves (with its pid) is taken over and removed by the next holder. A second writer gets
one line naming the folder and the holder's pid. Only the holder removes the file, and a writer that locked a
file someone removed meanwhile retries on the new one, so two writers never both hold the folder.

    with FolderLock(out, "--out"):
        ...
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from common.errors import UserError

LOCK_FILE = ".lock"


class FolderLock:
    def __init__(self, folder: Path, flag: str = "--out"):
        self.folder, self.flag, self.fd, self.made = Path(folder), flag, None, False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> FolderLock:
        """Take the lock (creating the folder), or raise UserError naming the holder's pid."""
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.flag} {self.folder}: is a file, not a folder")
        self.made = not self.folder.exists()
        while self.fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # its last holder removed the folder it had made, just now
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UserError(f"{self.flag} {self.folder}: in use by another process (pid {holder}); wait for it "
                                "to finish or stop it, or choose another folder") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino  # not a file its holder just removed
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: nobody else can hold this file now
        finally:
            os.close(self.fd)
            self.fd = None
        if self.made:  # a folder this lock made and nothing was written into: not left behind
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
