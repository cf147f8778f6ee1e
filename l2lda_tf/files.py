"""Files the library writes: atomically, and with the modes a plain `open`/`mkdir` would give
under the process umask (temporary files and folders are 0600/0700, which another user, such
as a TF Serving account, cannot read)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (setting it, even
    briefly, races with files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def make_readable(path: str | Path) -> None:
    """Gives a file, or a folder tree, the modes a plain `open`/`mkdir` would under the current
    umask (0644/0755 under the usual 022)."""
    umask = current_umask()
    if not os.path.isdir(path):
        os.chmod(path, 0o666 & ~umask)
        return
    os.chmod(path, 0o777 & ~umask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def write_atomically(path: str | Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file, so `path` is never half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
