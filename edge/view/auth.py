"""Who may look and who may do what: passwords hashed with scrypt (standard library) in the view's
config, two roles, sessions held in memory (a restart signs everyone out, which a panel PC survives),
and sign-in attempts throttled.

Roles: an **operator** views and marks parts for a look; an **engineer** also reviews them (the
reviews become calibration data), exports and resets the shift counters. The password typed decides
the role: `engineer_password_hash` → engineer, `password_hash` → operator. On a loopback bind
without any password, a name is enough and makes an engineer (the box's own screen); with only
`engineer_password_hash` set, a name without a password makes an operator.
"""

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
OPERATOR, ENGINEER = "operator", "engineer"
ROLES = (OPERATOR, ENGINEER)


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
        raise ConfigError("password hash: expected scrypt$N$R$P$SALT$HASH as `hlgfa view --hash-password` prints it")
    return stored


def verify_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    computed = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                              maxmem=2**26, dklen=len(bytes.fromhex(digest)))
    return hmac.compare_digest(computed, bytes.fromhex(digest))


def role_for(password: str, operator_hash: str | None, engineer_hash: str | None) -> str | None:
    """The role `password` opens, None for a wrong one (the rules are in the module's text)."""
    if engineer_hash is not None and password and verify_password(password, engineer_hash):
        return ENGINEER
    if operator_hash is not None:
        return OPERATOR if password and verify_password(password, operator_hash) else None
    if engineer_hash is None:
        return ENGINEER
    return OPERATOR if not password else None


class Sessions:
    """Random tokens (the cookie) → the name the person signed in with and their role."""

    def __init__(self, ttl_s: float = SESSION_TTL_S):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, str, float]] = {}

    def create(self, name: str, role: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._sessions = {t: v for t, v in self._sessions.items() if v[2] > now}
            self._sessions[token] = (name, role, now + self.ttl_s)
        return token

    def user(self, token: str | None) -> tuple[str, str] | None:
        """(name, role) of a live session."""
        if not token:
            return None
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None or entry[2] < time.monotonic():
                return None
            return entry[0], entry[1]

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)


class LoginThrottle:
    """Backoff on wrong passwords: after the n-th failure in a row from one address, that address waits
    `base_s` · 2^(n-1) (at most `max_s`) before it may try again; and while more than `global_failures`
    failures happened in the last minute, from anywhere, every address waits at least `global_wait_s`
    after the latest (many addresses guessing together)."""

    def __init__(self, base_s: float = 0.5, max_s: float = 60.0, global_failures: int = 30, global_wait_s: float = 5.0,
                 clock=time.monotonic):
        self.base_s, self.max_s = base_s, max_s
        self.global_failures, self.global_wait_s = global_failures, global_wait_s
        self.clock = clock
        self._lock = threading.Lock()
        self._by_address: dict[str, tuple[int, float]] = {}  # address → (failures in a row, may try at)
        self._recent: list[float] = []

    def wait_s(self, address: str) -> float:
        """Seconds before `address` may try; 0 when it may now."""
        now = self.clock()
        with self._lock:
            self._recent = [t for t in self._recent if now - t < 60.0]
            wait = self._by_address.get(address, (0, now))[1] - now
            if len(self._recent) > self.global_failures:
                wait = max(wait, self._recent[-1] + self.global_wait_s - now)
            return max(0.0, wait)

    def failed(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            failures = self._by_address.get(address, (0, now))[0] + 1
            if len(self._by_address) > 10_000:  # a flood of addresses cannot grow this without bound
                self._by_address.clear()
            self._by_address[address] = (failures, now + min(self.max_s, self.base_s * 2 ** (failures - 1)))
            self._recent.append(now)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._by_address.pop(address, None)
