"""Fault tests run real server processes with embedded PostgreSQL.

Their data dirs live in a directory of their own under /tmp (mode 0755), not
under pytest's ``tmp_path``: as root the embedded PostgreSQL runs as another
user, which must traverse the path, and pytest keeps /tmp/pytest-of-<user>
at mode 0700 (resetting it whenever any pytest run starts).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def data_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="faults-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
