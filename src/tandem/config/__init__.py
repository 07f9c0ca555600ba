"""Profiles: load, defaults, validation (timing rules), atomic write, edits.

    load_profile(home, "haprofile1/primary/AMS") -> Profile
    resolve_profile_name("haprofile1/primary", "AMS") -> "haprofile1/primary/AMS"
    list_profiles(home) -> ["haprofile1/primary/AGS", ...]
    write_profile(folder, data)                 # temp file, fsync, rename, fsync dir
    init_home(home) -> [profile names]          # `tandem home init`
    configure_ha(home, "haprofile1", "AMS", "replicated", ["LockFile=/x"])
    set_profile_values(home, name, ["server.ClientPort=18000"])
"""

from tandem.config.edit import configure_ha, set_profile_values
from tandem.config.home import init_home
from tandem.config.load import list_profiles, load_profile, profile_folder, profiles_dir, resolve_profile_name
from tandem.config.model import (
    AdminSection,
    GatewaySection,
    HASection,
    HAType,
    Mode,
    Profile,
    ReplicationMode,
    Role,
    ServerSection,
)
from tandem.config.validate import check_timing, parse_profile, profile_warnings, timing_violations
from tandem.config.write import profile_to_dict, write_profile

__all__ = [
    "AdminSection",
    "GatewaySection",
    "HASection",
    "HAType",
    "Mode",
    "Profile",
    "ReplicationMode",
    "Role",
    "ServerSection",
    "check_timing",
    "configure_ha",
    "init_home",
    "list_profiles",
    "load_profile",
    "parse_profile",
    "profile_folder",
    "profile_to_dict",
    "profile_warnings",
    "profiles_dir",
    "resolve_profile_name",
    "set_profile_values",
    "timing_violations",
    "write_profile",
]
