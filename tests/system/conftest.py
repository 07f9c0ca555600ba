"""System-test fixtures; the harness itself is `tests.support.harness` (shared with bench/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.config import init_home
from tests.support.harness import (  # noqa: F401  (re-exported for the test modules)
    Home,
    Server,
    Watcher,
    echo_backend,
    free_port,
    fresh_ports,
    holds_for,
    http_get,
    port_open,
    run_cli,
    tandem_cmd,
    wait_for,
)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An echo backend for the module: its URL and the JSON-lines log of what it received."""
    log = tmp_path_factory.mktemp("backend") / "requests.jsonl"
    with echo_backend(log, "real") as (url, _):
        yield url, log


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = tmp_path / "home"
    init_home(h)
    fresh_ports(h)
    hm = Home(h)
    try:
        yield hm
    finally:
        hm.cleanup()
