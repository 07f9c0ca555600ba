"""Suite-wide: tests that look inside the pure-Python hot path (`pure_python`).

When the compiled hot path is in use (tandem/native.py), a test marked `pure_python`
is deselected here, not skipped: it inspects the Python objects themselves
(instance dicts, a method swapped for its copy, a dict subclass counting probes),
which compiled classes do not have. tests/unit/test_native.py runs the unit and
integration tests again with TANDEM_NATIVE=0, these included.
"""

from __future__ import annotations

import pytest

from tandem.native import status


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not status()[0]:
        return
    keep, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("pure_python") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
