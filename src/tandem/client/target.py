"""Which AMS the CLI talks to, and with which token.

`--profile` names an AMS profile (`server1`, `haprofile1/primary`) or a pair
(`haprofile1`): a profile of a pair brings its other half along, so the URL
list holds both client URLs and the client fails over to whichever is active.
The token is `--token`, else env `TANDEM_TOKEN`, else the first `admin.token`
found among those profiles (`<store dir>/admin.token`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tandem.client.http import Client, ClientError
from tandem.config import Profile, list_profiles, load_profile, resolve_profile_name
from tandem.config.tokenfile import admin_token_path
from tandem.errors import ConfigError, UnknownProfile, UsageError

ENV_TOKEN = "TANDEM_TOKEN"
ROLES = ("primary", "secondary")


def ams_profiles(home: Path, arg: str) -> list[Profile]:
    """The AMS profiles `arg` designates, the named one first."""
    name = resolve_profile_name(arg, "AMS")
    if name.endswith("/AGS"):
        raise UsageError(f"--profile {arg}: an AGS profile; the admin API is on the AMS")
    known = list_profiles(home)
    parts = name.split("/")
    if name in known:
        names = [name]
        if len(parts) == 3 and parts[1] in ROLES:
            other = f"{parts[0]}/{ROLES[1 - ROLES.index(parts[1])]}/AMS"
            if other in known:
                names.append(other)
    else:
        pair = arg.strip().strip("/")
        names = [f"{pair}/{role}/AMS" for role in ROLES if f"{pair}/{role}/AMS" in known]
        if not names:
            raise UnknownProfile(f"--profile {arg}: no AMS profile or pair of that name in {home}")
    profiles = [load_profile(home, n) for n in names]
    if len(profiles) == 2 and profiles[0].ha.Type == "none":
        profiles = profiles[:1]
    return profiles


def token_files(profiles: list[Profile]) -> list[Path]:
    return [admin_token_path(p.db_path, p.folder) for p in profiles]


def read_token_file(paths: list[Path]) -> str | None:
    for path in paths:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if token:
            return token
    return None


def resolve_target(home: Path, url: str | None, profile_arg: str, token: str | None) -> tuple[str, str]:
    """(';'-separated URLs, token) for the CLI; UsageError/ConfigError (exit 2) when unknown."""
    profiles: list[Profile] = []
    try:
        profiles = ams_profiles(home, profile_arg)
    except ConfigError:
        if url is None:
            raise
    urls = url or ";".join(p.client_url for p in profiles)
    token = token or os.environ.get(ENV_TOKEN) or read_token_file(token_files(profiles))
    if not token and profiles and url is None:
        # an AMS writes admin.token when it first serves a request: nudge it once with the
        # unauthenticated health call, then look again
        with contextlib.suppress(ClientError, ValueError), Client(urls, timeout=2.0) as client:
            client.get("/api/v1/health")
            token = read_token_file(token_files(profiles))
    if not token:
        looked = ", ".join(str(p) for p in token_files(profiles)) or "no profile"
        raise UsageError(f"no token: pass --token, set {ENV_TOKEN}, or use a profile whose admin.token exists "
                         f"(looked in: {looked})")
    return urls, token
