"""File modes of a published export folder."""

from __future__ import annotations

import os
from pathlib import Path


def apply_umask(staging: Path) -> None:
    """Temporary files and folders are private (0600/0700); the published export follows the umask
    like any other file, so that a server running as another user can read it. Hard links into the
    backbone store (``--hardlink-backbone``) keep their read-only mode."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    for path in staging.rglob("*"):
        if path.is_dir():
            path.chmod(0o777 & ~umask)
        elif path.is_file() and path.stat().st_nlink == 1:
            path.chmod(0o666 & ~umask)
