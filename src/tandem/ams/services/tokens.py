"""Gateway tokens: credentials an AGS presents to the config feed.

Issued with `secrets`, shown once, stored as sha256 hex (the store key, so a
poll authenticates with one lookup). They open the feed only.
"""

from __future__ import annotations

import secrets
from typing import Any

from tandem.ams.api_errors import ApiError
from tandem.ams.app_state import NS_GATEWAY_TOKENS, AmsState, now_iso
from tandem.ams.services.users import sha256_hex
from tandem.store import Op

TOKEN_PREFIX = "tgw_"


class TokenService:
    def __init__(self, state: AmsState) -> None:
        self.state = state

    def list(self) -> list[dict[str, Any]]:
        records = [v for _, v in self.state.store().scan(NS_GATEWAY_TOKENS)]
        return sorted(records, key=lambda r: (r["created_at"], r["id"]))

    def issue(self, name: str) -> dict[str, Any]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = {"id": "gt_" + secrets.token_hex(8), "name": name, "created_at": now_iso()}
        with self.state.lock:
            self.state.commit([Op(NS_GATEWAY_TOKENS, sha256_hex(token), record)])
        return {**record, "token": token}

    def revoke(self, token_id: str) -> None:
        with self.state.lock:
            for digest, record in self.state.store().scan(NS_GATEWAY_TOKENS):
                if record["id"] == token_id:
                    self.state.commit([Op(NS_GATEWAY_TOKENS, digest, None)])
                    return
        raise ApiError(404, "not_found", f"no gateway token {token_id!r}")
