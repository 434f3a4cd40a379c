"""Making a rename durable: after os.replace, the folder's entry must reach the disk too."""

import os
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """fsync a folder, so that files created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
