"""Puts this folder on sys.path so the test (and bench/faults.py) can `import nemesis`
under pytest's --import-mode=importlib."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
