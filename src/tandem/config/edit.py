"""Change profiles from the command line: `profile set` and `profile configure-ha`.

Both follow one order: read, apply every change in memory, validate the whole
result exactly as `load_profile` would (timing rules included), and only then
write. A refused change leaves every file byte-for-byte as it was.
"""

from __future__ import annotations

import secrets
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tandem.config.load import PROFILE_FILE, profile_folder, read_profile_data
from tandem.config.model import Profile, ServerSection
from tandem.config.validate import (
    MODES,
    SECTIONS,
    check_value,
    fmt_value,
    parse_profile,
    section_fields,
    section_of_key,
)
from tandem.config.write import leading_comments, write_profiles
from tandem.errors import ConfigError, UnknownProfile

HALVES = ("primary", "secondary")
HA_TYPES = ("replicated", "shared")
TRUE = frozenset({"true", "yes", "on", "1"})
FALSE = frozenset({"false", "no", "off", "0"})

# configure-ha derives these itself: Type from --type, Role from the folder,
# the Backup* keys from the other half's [server] addresses
DERIVED = {
    "Type": "set by --type",
    "Role": "given by the profile folder (primary/secondary)",
    "BackupServerIp": "derived from the other half's ClientAddress",
    "BackupHAIPAddress": "derived from the other half's HAAddress",
    "BackupHAPort": "derived from the other half's HAPort",
}
# keys that differ between the halves: only as primary.KEY=V / secondary.KEY=V
PER_HALF = frozenset({"ClientAddress", "ClientPort", "HAAddress", "HAPort"})
# may be given for the pair (both halves) or per half
EITHER = frozenset({"DbPath"})


@dataclass(frozen=True)
class Assignment:
    section: str
    key: str
    value: Any


def _split_assignment(where: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{where}: {text!r}: expected KEY=VALUE")
    return key.strip(), value


def coerce(where: str, section: str, key: str, text: str) -> Any:
    """The command-line text `text` as a value of the type `[section] key` has."""
    fields = section_fields(section)
    if key not in fields:
        reason = check_value(section, key, text)  # names the unknown key, with a hint
        raise ConfigError(f"{where}: [{section}] {key} = {fmt_value(key, text)}: {reason}")
    tp = fields[key]
    if tp is int:
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise ConfigError(f"{where}: [{section}] {key} = {fmt_value(key, text)}: must be an integer") from None
    if tp is bool:
        low = text.strip().lower()
        if low in TRUE | FALSE:
            return low in TRUE
        raise ConfigError(f"{where}: [{section}] {key} = {fmt_value(key, text)}: must be true or false")
    if typing.get_origin(tp) is Literal:
        return text.strip()
    return text


def parse_assignment(where: str, text: str) -> Assignment:
    """``section.Key=VALUE`` (or ``Key=VALUE`` when the key names its section)."""
    dotted, raw = _split_assignment(where, text)
    section, dot, key = dotted.rpartition(".")
    if not dot:
        found = section_of_key(dotted)
        if found is None:
            raise ConfigError(
                f"{where}: {dotted} = {fmt_value(dotted, raw)}: unknown key (write it as SECTION.KEY, "
                f"SECTION one of {', '.join(SECTIONS)})"
            )
        section, key = found, dotted
    elif section not in SECTIONS:
        raise ConfigError(f"{where}: {dotted} = {fmt_value(key, raw)}: unknown section [{section}]")
    return Assignment(section, key, coerce(where, section, key, raw))


def _read(home: Path, name: str) -> tuple[Path, dict[str, Any], str]:
    folder = profile_folder(home, name)
    path = folder / PROFILE_FILE
    data = read_profile_data(name, path)
    header = leading_comments(path.read_text(encoding="utf-8"))
    return folder, data, header


def _apply(where: str, data: dict[str, Any], a: Assignment) -> None:
    table = data.setdefault(a.section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {a.section} = {fmt_value(a.section, table)}: must be a table [{a.section}]")
    table[a.key] = a.value


def set_profile_values(home: Path, name: str, assignments: Sequence[str]) -> Profile:
    """Set ``section.Key=VALUE`` items in profile `name`; validated, then written atomically."""
    if not assignments:
        raise ConfigError(f"{name}: nothing to set (give KEY=VALUE items)")
    name = "/".join(p for p in name.strip("/").split("/") if p)
    folder, data, header = _read(home, name)
    for text in assignments:
        _apply(name, data, parse_assignment(name, text))
    profile = parse_profile(name, folder, data)
    write_profiles([(folder, data, header)])
    return profile


def _check_ports(pair: str, p: ServerSection, s: ServerSection) -> None:
    """The four listening sockets of a pair (two per half) must all differ."""
    seen: dict[tuple[str, int], str] = {}
    for half, sec in (("primary", p), ("secondary", s)):
        for kind, addr, port in (("ClientPort", sec.ClientAddress, sec.ClientPort),
                                 ("HAPort", sec.HAAddress, sec.HAPort)):
            where = f"{half}.{kind}"
            if (addr, port) in seen:
                raise ConfigError(f"{pair}: {where} = {port} is also {seen[(addr, port)]} on {addr}: "
                                  "every port of a pair must be its own")
            seen[(addr, port)] = where


def _check_stores(pair: str, primary: Profile, secondary: Profile) -> None:
    same_store = primary.db_path == secondary.db_path
    if primary.ha.Type == "shared" and not same_store:
        raise ConfigError(
            f"{pair}: [server] DbPath: a shared pair uses one store, but primary uses {primary.db_path} "
            f"and secondary {secondary.db_path} (set DbPath=/absolute/path for both)"
        )
    if primary.ha.Type == "replicated" and same_store:
        raise ConfigError(
            f"{pair}: [server] DbPath: a replicated pair needs a store per half, but both use {primary.db_path}"
        )


def _pair_assignment(where: str, text: str) -> tuple[str | None, Assignment]:
    """One configure-ha ``--set`` item: (None for both halves, or the half; the change)."""
    dotted, raw = _split_assignment(where, text)
    prefix, dot, key = dotted.partition(".")
    half = prefix if dot and prefix in HALVES else None
    if half is None:
        key = dotted[3:] if dotted.startswith("ha.") else dotted
    if key in DERIVED:
        raise ConfigError(f"{where}: {key} = {fmt_value(key, raw)}: cannot be set here: {DERIVED[key]}")
    if key in PER_HALF or key in EITHER:
        if half is None and key in PER_HALF:
            raise ConfigError(
                f"{where}: {key} = {fmt_value(key, raw)}: differs per half: "
                f"write primary.{key}=VALUE or secondary.{key}=VALUE"
            )
        return half, Assignment("server", key, coerce(where, "server", key, raw))
    if half is not None:
        raise ConfigError(f"{where}: {dotted} = {fmt_value(key, raw)}: {key} is pair-wide: write {key}=VALUE")
    if key not in section_fields("ha"):
        if section_of_key(key) is None:
            reason = check_value("ha", key, raw)
        else:
            reason = f"not an [ha] key (set [{section_of_key(key)}] keys with `tandem profile set`)"
        raise ConfigError(f"{where}: [ha] {key} = {fmt_value(key, raw)}: {reason}")
    return None, Assignment("ha", key, coerce(where, "ha", key, raw))


def configure_ha(
    home: Path,
    pair: str,
    component: str,
    ha_type: str,
    assignments: Sequence[str] = (),
) -> tuple[Profile, Profile]:
    """Configure both halves of `pair` (e.g. "haprofile1") for `component` (AMS/AGS).

    Both get Type `ha_type`, each points its Backup* keys at the other's
    addresses, and they share one PairSecret (kept if both already have the
    same one, else generated). `assignments` are ``KEY=VALUE`` ([ha] keys,
    applied to both halves) or ``primary.KEY=VALUE`` / ``secondary.KEY=VALUE``
    (per-half address keys). Nothing is written unless both results are valid.
    """
    pair = pair.strip().strip("/")
    component = component.strip().upper()
    if component not in MODES:
        raise ConfigError(f"{pair}: --component {component}: must be AMS or AGS")
    if ha_type not in HA_TYPES:
        raise ConfigError(f"{pair}: --type {ha_type}: must be replicated or shared")
    if not pair or "/" in pair or pair in (".", ".."):
        raise UnknownProfile(f"unknown pair {pair!r} (a pair is a folder under profiles/, e.g. haprofile1)")
    names = {half: f"{pair}/{half}/{component}" for half in HALVES}
    found: dict[str, tuple[Path, dict[str, Any], str]] = {}
    missing = []
    for half, name in names.items():
        try:
            found[half] = _read(home, name)
        except UnknownProfile:
            missing.append(name)
    if len(missing) == 2:
        raise UnknownProfile(f"unknown pair '{pair}' for {component} (no profiles {missing[0]} or {missing[1]})")
    if missing:
        raise UnknownProfile(f"pair '{pair}' has no {missing[0]} profile: both halves are needed")

    where = f"{pair} ({component})"
    pair_wide: list[Assignment] = []
    per_half: dict[str, list[Assignment]] = {half: [] for half in HALVES}
    for text in assignments:
        target, a = _pair_assignment(where, text)
        (pair_wide if target is None else per_half[target]).append(a)

    datas = {half: found[half][1] for half in HALVES}
    for half in HALVES:
        for a in (*pair_wide, *per_half[half]):
            _apply(names[half], datas[half], a)
    for half in HALVES:
        _apply(names[half], datas[half], Assignment("ha", "Type", ha_type))
        _apply(names[half], datas[half], Assignment("ha", "Role", half))
    # the peer's addresses come from its [server] table after the edits above
    servers = {
        half: parse_profile(names[half], found[half][0], {"server": datas[half].get("server", {})}).server
        for half in HALVES
    }
    _check_ports(where, servers["primary"], servers["secondary"])
    for half in HALVES:
        peer = servers["secondary" if half == "primary" else "primary"]
        ha = datas[half]["ha"]
        ha["BackupServerIp"] = peer.ClientAddress
        ha["BackupHAIPAddress"] = peer.HAAddress
        ha["BackupHAPort"] = peer.HAPort
    if not any(a.key == "PairSecret" for a in pair_wide):
        current = {datas[h]["ha"].get("PairSecret", "") for h in HALVES}
        if len(current) != 1 or current == {""}:
            secret = secrets.token_hex(24)
            for half in HALVES:
                datas[half]["ha"]["PairSecret"] = secret

    primary = parse_profile(names["primary"], found["primary"][0], datas["primary"])
    secondary = parse_profile(names["secondary"], found["secondary"][0], datas["secondary"])
    _check_stores(where, primary, secondary)
    write_profiles([(found[h][0], datas[h], found[h][2]) for h in HALVES])
    return primary, secondary
