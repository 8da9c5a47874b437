"""State is private to the bot's user: directories 0700, files 0600, whatever existed
before (an operator's ``mkdir``, an older newsbot, a restored backup). The state holds
subscribers' ids, the Matrix access token and the encryption keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700, or tighten it to 0700 if it exists.
    Raises OSError, e.g. when the directory belongs to another user."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        path.chmod(DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing (so what opens it next — SQLite —
    never creates it with the umask's mode), or tighten it to 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def tighten(path: Path) -> None:
    """0600 for a file that exists; nothing for one that does not."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != FILE_MODE:
            path.chmod(FILE_MODE)
    except FileNotFoundError:
        pass


def tighten_tree(directory: Path) -> None:
    """``directory`` and its subdirectories 0700, every file in them 0600."""
    private_dir(directory)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            private_dir(Path(root, name))
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                tighten(path)


def write_private(path: Path, data: str) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from the start, flushed to
    disk (the file and the rename) before returning."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        # O_CREAT keeps the mode of a leftover tmp file: set it whatever it was.
        os.fchmod(fd, FILE_MODE)
        remaining = memoryview(data.encode())
        while remaining:
            remaining = remaining[os.write(fd, remaining):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
