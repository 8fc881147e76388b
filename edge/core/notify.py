"""sd_notify(3): the systemd notify protocol, spoken directly.

A datagram to the AF_UNIX socket named in NOTIFY_SOCKET rather than python-systemd or sdnotify: it
is a dozen lines, and a Jetson image then needs no libsystemd bindings. With NOTIFY_SOCKET unset (a
terminal, a test, a container without systemd) every notification is a no-op. The camera daemon
(edge/service/health.py) and the PLC bridge both speak it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

from edge.core.errors import ConfigError

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 0.25  # for READY/RELOADING/STOPPING only; far below the 5 s ping interval

class SystemdNotifier:
    """sd_notify(3) over the datagram socket systemd passes in NOTIFY_SOCKET.

    `environ` defaults to os.environ; it is read once, here, so a notifier's target does not
    change under it.
    """

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        self._address = _notify_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = _watchdog_timeout_s(env)
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str, wait: bool = False) -> bool:
        """Send one datagram of `KEY=value` lines; True when it was sent.

        A manager that stops reading (stuck, or mid daemon-reexec) fills the socket, and the
        pipeline loop must not stall behind it: pings and status are dropped at once then
        (pings missed for all of WatchdogSec= restart the daemon, the right outcome). State
        changes (`wait=True`) are worth a short wait.
        """
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # 0.0 makes the socket non-blocking (with a timeout set, Python polls and retries
                # even a MSG_DONTWAIT send).
                self._socket.settimeout(SEND_TIMEOUT_S if wait else 0.0)
                self._socket.sendto(payload, self._address)
            except OSError as error:
                # A lost notification must not take the inspection down; if systemd stops
                # hearing watchdog pings it restarts us anyway, which is the right outcome.
                if not self._warned:
                    log.warning("sd_notify to %r failed: %s (further failures are not logged)",
                                self._address, error)
                    self._warned = True
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status_line(status), wait=True)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(*_status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status_line(status), wait=True)

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd ≥253 (Type=notify-reload) tell this reload from an
        # earlier one; older managers ignore the unknown field. READY=1 ends the reload.
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", *_status_line(status), wait=True)

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None when not asked for."""
        if self._watchdog_s is None or self._address is None:
            return None
        return self._watchdog_s / 2.0

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _status_line(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A newline would end the assignment and start a bogus one.
    return ("STATUS=" + " ".join(text.splitlines()),)


def _notify_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")  # Linux abstract namespace
    if value.startswith("/"):
        return value
    # systemd ≥254 may also pass "vsock:…"; we would never send READY=1 and be killed at
    # TimeoutStartSec with no hint why, so refuse loudly instead.
    raise ConfigError(f"NOTIFY_SOCKET={value!r}: expected an absolute AF_UNIX path or an '@' abstract "
                      "socket name; other transports are not supported")


def _watchdog_timeout_s(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        if not pid.isdigit():
            raise ConfigError(f"WATCHDOG_PID={pid!r}: expected a process id")
        if int(pid) != os.getpid():
            return None  # meant for another process (e.g. a wrapper that exec'd us under a new pid)
    if not usec.isdigit() or int(usec) == 0:
        raise ConfigError(f"WATCHDOG_USEC={usec!r}: expected a positive whole number of microseconds")
    return int(usec) / 1e6
