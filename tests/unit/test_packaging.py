"""The wheel ships the product only: test support (tests/support/) is never in it.

Built from a copy of the repository (as a clean clone would be: no build/, no egg-info),
so a stale build folder can neither hide nor fake a file.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import setuptools

ROOT = Path(__file__).resolve().parents[2]
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                                    ".hypothesis", "tandem-home")
TEST_SUPPORT_NAMES = ("testing.py", "testkit", "testcluster", "echo.py", "conftest.py")


def _builds_without_isolation() -> bool:
    """setuptools builds a wheel by itself from 70.1 on; before that it needs the `wheel` package."""
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def test_the_wheel_holds_the_package_and_no_test_support(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=NOT_COPIED)
    isolation = ["--no-build-isolation"] if _builds_without_isolation() else []  # else: pip fetches the backend
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                           "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = (tmp_path / "dist").glob("tandem-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert "tandem/composition.py" in names and "tandem/cli/main.py" in names, names
    shipped_support = [n for n in names if n.startswith(("tests/", "bench/")) or "/tests/" in n
                       or any(word in n.rsplit("/", 1)[-1] for word in TEST_SUPPORT_NAMES)]
    assert shipped_support == [], f"test support in the wheel: {shipped_support}"
