"""Who may look and who may review: a password hashed with scrypt (standard library) in the view's
config, and sessions held in memory (a restart signs everyone out, which a panel PC survives)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from edge.core.errors import ConfigError

# scrypt cost: n=2^14, r=8 (~16 MiB, ~50 ms a check): slow for a guesser, quick for a login.
_N, _R, _P = 2**14, 8, 1
SESSION_TTL_S = 12 * 3600.0  # one shift and then some


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash` (hex), for the view config's `password_hash`."""
    if len(password) < 8:
        raise ConfigError("password: expected at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def check_hash_format(stored: str) -> str:
    parts = stored.split("$")
    try:
        ok = len(parts) == 6 and parts[0] == "scrypt" and all(int(p) > 0 for p in parts[1:4]) \
            and bytes.fromhex(parts[4]) and len(bytes.fromhex(parts[5])) == 32
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError("password_hash: expected scrypt$N$R$P$SALT$HASH as `hlgfa view hash-password` prints it")
    return stored


def verify_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    computed = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                              maxmem=2**26, dklen=len(bytes.fromhex(digest)))
    return hmac.compare_digest(computed, bytes.fromhex(digest))


class Sessions:
    """Random tokens (the cookie) → the name the person signed in with."""

    def __init__(self, ttl_s: float = SESSION_TTL_S):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, float]] = {}

    def create(self, name: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._sessions = {t: v for t, v in self._sessions.items() if v[1] > now}
            self._sessions[token] = (name, now + self.ttl_s)
        return token

    def user(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None or entry[1] < time.monotonic():
                return None
            return entry[0]

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)
