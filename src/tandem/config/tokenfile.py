"""Where a server's clear admin token lives: `<store dir>/admin.token`, or
`<profile folder>/admin.token` when the store is a PostgreSQL URL."""

from __future__ import annotations

from pathlib import Path

ADMIN_TOKEN_FILE = "admin.token"


def admin_token_path(db_location: str, profile_folder: Path) -> Path:
    if db_location.startswith(("postgresql://", "postgres://")):
        return Path(profile_folder) / ADMIN_TOKEN_FILE
    return Path(db_location) / ADMIN_TOKEN_FILE
