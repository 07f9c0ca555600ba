"""The compiled hot path (tandem/native.py): in use when built, never stale, and the pure-Python path
still passing the unit and integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tandem.native as native

ROOT = Path(__file__).resolve().parents[2]


def _status_in_child(env: dict[str, str]) -> tuple[str, str]:
    code = ("import tandem.native as n, tandem.ags.protocol as p; print(n.status()[1]); print(p.__file__)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return out[0], out[1]


def test_built_and_in_use_in_ci() -> None:
    """`make` builds it (CI runs `make test`): on CI the gateway's modules must be the compiled ones."""
    used, why = native.status()
    if os.environ.get("CI") == "true":
        assert used, why
    if used:
        import tandem.ags.exchange
        import tandem.ags.protocol

        assert tandem.ags.protocol.__file__.endswith(".so") and tandem.ags.exchange.__file__.endswith(".so")


def test_the_switch_and_a_stale_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    why, where = _status_in_child({"TANDEM_NATIVE": "0"})
    assert why == "pure Python (TANDEM_NATIVE=0)" and where.endswith("protocol.py")
    # a manifest whose hash is not the source's: the build is stale, Python runs
    monkeypatch.setattr(native, "MANIFEST", tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"suffix": native._suffix(), "modules": {m: native.source_hash(m) for m in native.MODULES}
         | {"tandem.ags.router": "0" * 64}}))
    monkeypatch.setenv("TANDEM_NATIVE", "1")
    used, why = native._check()
    assert not used and "tandem.ags.router changed since it was compiled" in why
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"suffix": native._suffix(), "modules": {m: native.source_hash(m) for m in native.MODULES[1:]}}))
    assert "built for another set of modules" in native._check()[1]
    (tmp_path / "manifest.json").write_text(json.dumps({"suffix": ".cpython-299-x.so", "modules": {}}))
    assert "built for .cpython-299-x.so" in native._check()[1]
    (tmp_path / "manifest.json").unlink()
    assert native._check() == (False, "pure Python (not built: python -m tandem.native build, run by make)")


@pytest.mark.timeout(1200)
def test_the_pure_python_path_passes_the_unit_and_integration_tests() -> None:
    """With the hot path compiled, the same tests again on the Python sources (the `pure_python` ones too)."""
    if not native.status()[0]:
        assert os.environ.get("CI") != "true", native.status()[1]
        return  # not built here: this very run is the pure-Python one
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/unit",
                           "tests/integration", "--ignore", "tests/unit/test_native.py"], cwd=ROOT,
                          env={**os.environ, "TANDEM_NATIVE": "0"}, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1] and "deselected" not in proc.stdout.splitlines()[-1]
