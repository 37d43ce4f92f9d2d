"""A desktop session for notification tests, from Debian's packages: Xvfb, a session bus
from ``dbus-run-session``, notification-daemon owning ``org.freedesktop.Notifications``,
and ``dbus-monitor`` writing down every ``Notify`` call and every method return on it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

NOTIFICATION_DAEMON = Path("/usr/lib/notification-daemon/notification-daemon")
PROGRAMS = ("Xvfb", "dbus-run-session", "dbus-monitor", "dbus-send")

_HEADER = re.compile(r"(\w+)=(\S+)")
_ARGUMENT = re.compile(r"^   (\w+) (.*)$")  # a top-level argument: nested ones go deeper
_URGENCY = re.compile(r'string "urgency"\s+variant\s+byte (\d)')


@dataclass(frozen=True)
class NotifyCall:
    """One ``org.freedesktop.Notifications.Notify`` call seen on the bus."""

    sender: str
    serial: str
    app_name: str
    summary: str
    body: str
    urgency: int | None


@dataclass(frozen=True)
class Bus:
    """What ``dbus-monitor`` saw: Notify calls and the replies to them."""

    calls: list[NotifyCall]
    replies: set[tuple[str, str]]
    """(destination, reply_serial) of each method return."""

    def answered(self, call: NotifyCall) -> bool:
        return (call.sender, call.serial) in self.replies


def parse_monitor(text: str) -> Bus:
    calls: list[NotifyCall] = []
    replies: set[tuple[str, str]] = set()
    for block in re.split(r"\n(?=\S)", text):
        header, _, rest = block.partition("\n")
        fields = dict(_HEADER.findall(header))
        if header.startswith("method return"):
            replies.add((fields.get("destination", ""), fields.get("reply_serial", "")))
        elif header.startswith("method call") and fields.get("member") == "Notify":
            arguments = [m.groups() for m in map(_ARGUMENT.match, rest.splitlines()) if m]
            strings = [_unquote(value) for kind, value in arguments if kind == "string"]
            urgency = _URGENCY.search(rest)
            calls.append(
                NotifyCall(
                    sender=fields["sender"],
                    serial=fields["serial"],
                    app_name=strings[0],
                    summary=strings[2],
                    body=strings[3],
                    urgency=int(urgency.group(1)) if urgency else None,
                )
            )
    return Bus(calls, replies)


def _unquote(value: str) -> str:
    return value[1:-1] if value.startswith('"') and value.endswith('"') else value


@dataclass(frozen=True)
class DesktopSession:
    env: dict[str, str]
    """DISPLAY and DBUS_SESSION_BUS_ADDRESS: a process given these notifies here."""
    monitor_log: Path
    daemon: subprocess.Popen[bytes]
    """The notification daemon."""

    def bus(self) -> Bus:
        return parse_monitor(self.monitor_log.read_text(errors="replace"))

    def hang_daemon(self) -> None:
        """Stop the daemon (SIGSTOP): it keeps its name on the bus and answers nothing,
        as a hung notification service does, until the session ends."""
        os.kill(self.daemon.pid, signal.SIGSTOP)


def missing_programs() -> list[str]:
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    return missing + ([] if NOTIFICATION_DAEMON.exists() else [str(NOTIFICATION_DAEMON)])


@contextlib.contextmanager
def desktop_session(directory: Path, *, within: float = 30) -> Iterator[DesktopSession]:
    """Each process in its own process group, all of it ended on the way out (a D-Bus
    daemon outlives ``dbus-run-session``'s own exit otherwise)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], **options: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, start_new_session=True, **options)  # type: ignore[call-overload]
        started.append(process)
        return process

    try:
        read, write = os.pipe()
        start(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
            pass_fds=(write,),
            stderr=subprocess.DEVNULL,
        )
        os.close(write)
        with os.fdopen(read) as display:
            number = display.readline().strip()
        assert number, "Xvfb did not say its display"
        bus = start(
            [
                "dbus-run-session",
                "--",
                "sh",
                "-c",
                'echo "$DBUS_SESSION_BUS_ADDRESS"; exec sleep infinity',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        assert address, "dbus-run-session did not start a bus"
        env = {"DISPLAY": f":{number}", "DBUS_SESSION_BUS_ADDRESS": address}
        session_env = {**os.environ, **env, "NO_AT_BRIDGE": "1"}
        daemon = start([str(NOTIFICATION_DAEMON)], env=session_env, stderr=subprocess.DEVNULL)
        _wait_for_name("org.freedesktop.Notifications", session_env, within)
        monitor_log = directory / "dbus-monitor.log"
        with monitor_log.open("wb") as log:
            start(
                [
                    "dbus-monitor",
                    "--session",
                    "type='method_call',interface='org.freedesktop.Notifications',member='Notify'",
                    "type='method_return'",
                ],
                env=session_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # A monitor drops its own name on becoming one: from then on it sees everything.
        _wait_until(lambda: "NameLost" in monitor_log.read_text(errors="replace"), within)
        yield DesktopSession(env=env, monitor_log=monitor_log, daemon=daemon)
    finally:
        for process in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
                os.killpg(process.pid, signal.SIGCONT)  # a hung one ends too
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_for_name(name: str, env: dict[str, str], within: float) -> None:
    def owned() -> bool:
        answer = subprocess.run(
            [
                "dbus-send",
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                f"string:{name}",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        return "boolean true" in answer.stdout

    _wait_until(owned, within)


def _wait_until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the desktop session did not start within {within}s")
        time.sleep(0.05)
