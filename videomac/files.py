"""Writing files safely: every file videomac writes goes through :func:`atomic_file`.

A temporary file is created *exclusively* beside the target (``O_CREAT | O_EXCL``, a random name that
also carries the writer's pid, so a symlink planted at a predictable name is never followed), written,
fsynced and renamed over the target. A crash therefore leaves the old file or the new one, never a
partial one, and a temporary left by a killed process is recognised by :func:`stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from typing import Callable, Iterator, List, Optional

__all__ = ["atomic_file", "no_space_error", "stale_temporaries", "TMP_PATTERN"]

# ".<name>.tmp-<pid>-<random>": the pid lets a later run tell a dead writer's leftovers from a live one's.
TMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)-[A-Za-z0-9_]+$")


def no_space_error(path: str, cause: BaseException) -> OSError:
    """``OSError(ENOSPC)`` that names the mount, its free space and the file being written."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    mount = folder
    while not os.path.ismount(mount) and os.path.dirname(mount) != mount:
        mount = os.path.dirname(mount)
    err = OSError(errno.ENOSPC, f"no space left on {mount} ({free}) while writing {path}; the previous file is intact")
    err.__cause__ = cause
    return err


@contextlib.contextmanager
def atomic_file(path: str, before_replace: Optional[Callable[[], None]] = None, durable: bool = True) -> Iterator[str]:
    """Yields the path of a new, empty, exclusively created file beside ``path``; once the body has
    written it, it is fsynced and renamed over ``path`` (a symlink at ``path`` is replaced, never written
    through). ``before_replace`` runs after the fsync, just before the rename. ``durable=False`` skips the
    fsync, for the many small files of one result (a crash of the process still leaves no partial file).
    On any error the temporary is removed and ``path`` is untouched; a full disk (or quota) raises
    ``OSError(ENOSPC, "no space left on <mount> ... while writing <path>")``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-")
    os.close(fd)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space_error(path, e) from e
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def stale_temporaries(folder: str) -> List[str]:
    """Temporaries in ``folder`` left by :func:`atomic_file` writers that no longer run."""
    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        m = TMP_PATTERN.match(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            found.append(os.path.join(folder, name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
