"""The gateway's hot path compiled with mypyc: optional, built by `make`, never stale (docs/native.md).

The modules in `MODULES` are plain typed Python. `python -m tandem.native build`
(a no-op when the build in place is fresh; `make up` and `make test` run it) compiles them with mypyc (a dev dependency) into `_native/` beside this file,
with a manifest naming each module's source hash and the interpreter's
extension suffix. At import, `tandem.ags` puts `_native/tandem/ags` before its
own folder in its `__path__` (`extend_path`) when, and only when:

* `TANDEM_NATIVE` is not `0` (the pure-Python path, kept working and tested);
* the manifest's extension suffix is this interpreter's;
* every compiled module's source still has the hash it was compiled from
  (an edited source runs as Python until the next build: a stale build never
  runs).

`status()` says which path this process runs and why; the gateway logs it at start.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # src/tandem
NATIVE = PACKAGE / "_native"
MANIFEST = NATIVE / "manifest.json"
MODULES = ("tandem.ags.protocol", "tandem.ags.exchange", "tandem.ags.upstream", "tandem.ags.accesslog",
           "tandem.ags.router", "tandem.ags.metrics")
ENV = "TANDEM_NATIVE"

_checked: tuple[bool, str] | None = None  # (compiled modules in use, why), once per process


def source(module: str) -> Path:
    return PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def source_hash(module: str) -> str:
    return hashlib.sha256(source(module).read_bytes()).hexdigest()


def _suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def _check() -> tuple[bool, str]:
    if os.environ.get(ENV, "1") == "0":
        return False, f"pure Python ({ENV}=0)"
    try:
        manifest = json.loads(MANIFEST.read_text())
    except FileNotFoundError:
        return False, "pure Python (not built: python -m tandem.native build, run by make)"
    except (OSError, ValueError) as exc:
        return False, f"pure Python (unreadable {MANIFEST}: {exc})"
    if manifest.get("suffix") != _suffix():
        return False, f"pure Python (built for {manifest.get('suffix')}, this interpreter loads {_suffix()})"
    hashes = manifest.get("modules", {})
    if set(hashes) != set(MODULES):
        return False, "pure Python (built for another set of modules: rebuild with make)"
    for module in MODULES:
        try:
            if hashes.get(module) != source_hash(module):
                return False, f"pure Python ({module} changed since it was compiled: rebuild with make)"
        except OSError as exc:
            return False, f"pure Python ({module}: {exc})"
    return True, f"compiled with mypyc ({len(MODULES)} modules)"


def status() -> tuple[bool, str]:
    """(compiled modules in use, a sentence saying why), decided once per process."""
    global _checked
    if _checked is None:
        _checked = _check()
        if _checked[0] and str(NATIVE) not in sys.path:
            sys.path.append(str(NATIVE))  # mypyc's shared runtime library is a top-level module there
    return _checked


def extend_path(path: list[str], package: str) -> list[str]:
    """A package's `__path__` with its compiled folder first, when `status()` allows it."""
    if not status()[0]:
        return path
    folder = NATIVE.joinpath(*package.split("."))
    return [str(folder), *path] if folder.is_dir() else path


def build(force: bool = False) -> int:
    """Compile MODULES into `_native/` (replaced whole: a failed build leaves the old one or none);
    nothing to do when the build in place is fresh, unless `force`."""
    if not force and os.environ.get(ENV, "1") != "0" and _check()[0]:
        print(f"tandem.native: {len(MODULES)} compiled modules up to date in {NATIVE}")
        return 0
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print("tandem.native: mypyc is not installed (pip install -e '.[dev]'); the gateway runs as pure Python",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tandem-native-") as tmp:
        work = Path(tmp)
        # the whole package, so mypyc resolves every import; only MODULES are compiled
        shutil.copytree(PACKAGE, work / "tandem", ignore=shutil.ignore_patterns("_native", "__pycache__"))
        hashes = {m: hashlib.sha256((work / Path(*m.split("."))).with_suffix(".py").read_bytes()).hexdigest()
                  for m in MODULES}
        files = [str(Path(*m.split(".")).with_suffix(".py")) for m in MODULES]
        env = dict(os.environ, MYPYPATH=str(work))
        proc = subprocess.run([sys.executable, "-m", "mypyc", *files], cwd=work, env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
            print("tandem.native: mypyc failed; the gateway runs as pure Python", file=sys.stderr)
            return 1
        out = work / "_out"
        suffix = _suffix()
        for lib in work.glob(f"*__mypyc{suffix}"):
            out.mkdir(exist_ok=True)
            shutil.copy2(lib, out / lib.name)
        for m in MODULES:
            rel = Path(*m.split("."))
            built = (work / rel).with_name(rel.name + suffix)
            (out / rel.parent).mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, out / rel.parent / built.name)
        (out / "manifest.json").write_text(json.dumps({"suffix": suffix, "modules": hashes}, indent=1) + "\n")
        old = NATIVE.with_name("_native.old")
        shutil.rmtree(old, ignore_errors=True)
        if NATIVE.exists():
            NATIVE.rename(old)
        shutil.move(str(out), NATIVE)
        shutil.rmtree(old, ignore_errors=True)
    print(f"tandem.native: compiled {len(MODULES)} modules into {NATIVE}")
    return 0


def main(argv: list[str]) -> int:
    if argv in (["build"], ["build", "--force"]):
        return build(force=argv[-1] == "--force")
    if argv == ["status"]:
        print(status()[1])
        return 0
    print("usage: python -m tandem.native build [--force] | status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
