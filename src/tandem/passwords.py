"""Password hashes for basic-auth credentials, shared by the AMS (hash) and the gateway (verify).

Format: `scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>` (hashlib.scrypt, 32-byte
hash, 16-byte salt). Slow on purpose (about 30-60 ms on this machine's
cores): a stolen configuration does not give the passwords away cheaply.
The gateway verifies a password once and caches the verdict under a fast
digest of (username, password), so the slow hash is not paid per request.

`sha256$<salt hex>$<hex>` hashes written by earlier versions still verify.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

LOG2_N, R, P = 14, 8, 1
MAXMEM = 64 * 1024 * 1024


def hash_password(password: str, salt: bytes | None = None, log2_n: int = LOG2_N) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** log2_n, r=R, p=P, maxmem=MAXMEM,
                            dklen=32)
    return f"scrypt${log2_n}${R}${P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Does `password` match `stored`? False for any malformed hash, never an exception."""
    try:
        scheme, *fields = stored.split("$")
        if scheme == "scrypt":
            log2_n, r, p, salt_hex, hash_hex = fields
            n, r_, p_ = 2 ** int(log2_n), int(r), int(p)
            if not (1 <= int(log2_n) <= 20 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
                return False
            digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=n, r=r_, p=p_,
                                    maxmem=MAXMEM, dklen=len(hash_hex) // 2)
            return hmac.compare_digest(digest.hex(), hash_hex.lower())
        if scheme == "sha256":
            salt_hex, hash_hex = fields
            salt = bytes.fromhex(salt_hex)
            hexdigest = hashlib.sha256(salt + password.encode("utf-8")).hexdigest()
            return hmac.compare_digest(hexdigest, hash_hex.lower())
    except (ValueError, TypeError, MemoryError, OverflowError):
        return False
    return False
