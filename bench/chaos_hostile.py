"""The hostile clients of bench/chaos.py: garbage, a client that never reads, 1,000
idle connections, oversized lines, every command with every wrong type, JSON
objects from hypothesis, and notify datagrams flooded from another uid.

The control socket's peers are the manager's own uid or root, so a hostile
client here is a buggy script or a compromised process of that user: nothing it
sends may end the manager or the service. A *valid* stop is never sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from chaos_basics import (
    TIMEOUT,
    FaultProblem,
    FaultRecord,
    ManagerGone,
    connect_unix,
    final_answers,
)
from chaos_campaign import Chaos
from chaos_faults import RELOAD, expect_upgraded, log
from chaos_target import Target

from gapless.run.control import MAX_LINE

NOBODY = 65534
COMMANDS = ("help", "status", "reload", "stop", "upgrade", "chaos-unknown")
WRONG: tuple[Any, ...] = (
    None, 0, -1, 2**64, 1.5, False, "", "a\u0000b", "x" * 5000, [], ["/usr/bin/python3"],
    {}, {"cmd": "stop"},
)  # fmt: skip


def wrong_requests(turn: int) -> list[dict[str, Any]]:
    """Every command with every wrong type in each field it reads, upgrades last.

    True and 1.0 equal 1 in Python: as versions they go with help and status only.
    A falsy ``python`` may mean "the manager's own interpreter" and really exec it
    (half a second each), so one of those a turn, in rotation.
    """
    requests: list[dict[str, Any]] = []
    for cmd in COMMANDS:
        requests += [{"v": wrong, "cmd": cmd} for wrong in (*WRONG, "1")]
    requests += [{"v": v, "cmd": cmd} for v in (True, 1.0) for cmd in ("help", "status")]
    requests += [{"v": 1, "cmd": wrong} for wrong in WRONG]
    falsy = [wrong for wrong in WRONG if not wrong]
    pythons = [*(wrong for wrong in WRONG if wrong), falsy[turn % len(falsy)]]
    requests += [{"v": 1, "cmd": "upgrade", "python": python} for python in pythons]
    return requests


def _send_line(target: Target, request: dict[str, Any]) -> dict[str, Any] | None:
    with connect_unix(target.control, TIMEOUT) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        return final_answers([sock], TIMEOUT)[0]


def _check_alive(target: Target, what: str) -> None:
    if not target.alive():
        raise ManagerGone(f"the manager exited after {what}:\n{target.tail()}")


def wrong_types(chaos: Chaos, record: FaultRecord) -> None:
    target = chaos.target
    record.inject_at = time.monotonic()
    chaos.turns["wrong-types"] += 1
    for request in wrong_requests(chaos.turns["wrong-types"]):
        before = target.status()["manager"] if request["cmd"] == "upgrade" else None
        text = json.dumps(request)[:80]
        try:
            answer = _send_line(target, request)
        except OSError as exc:
            _check_alive(target, text)
            raise FaultProblem(f"{text}: {exc}") from None
        _check_alive(target, text)
        if answer is None:
            raise FaultProblem(f"{text}: no answer")
        if answer.get("ok") and before is not None:  # a falsy python means "the same one"
            record.notes.append("a wrong-typed python upgraded with the manager's own")
            expect_upgraded(target, before, record)
        elif answer.get("ok") and request["cmd"] in ("help", "status", "reload"):
            record.notes.append(f"accepted as version 1: v={json.dumps(request['v'])}")


def hypothesis_json(chaos: Chaos, record: FaultRecord) -> None:
    """JSON objects drawn by hypothesis (seeded from the campaign), one a connection."""
    from chaos_fuzz import fuzz_requests

    target = chaos.target
    record.inject_at = time.monotonic()
    unanswered: list[str] = []

    def send(request: dict[str, Any]) -> None:
        try:
            answer = _send_line(target, request)
        except OSError:
            answer = None
        if answer is None:
            unanswered.append(json.dumps(request)[:80])

    fuzz_requests(send, chaos.rng.getrandbits(32), examples=25)
    _check_alive(target, f"hypothesis requests (first unanswered: {unanswered[:1]})")
    if unanswered:
        raise FaultProblem(f"{len(unanswered)} fuzzed requests got no answer: {unanswered[0]}")


def garbage(chaos: Chaos, record: FaultRecord) -> None:
    rng = chaos.rng
    lines = [rng.randbytes(rng.randint(1, 2048)).replace(b"\n", b" ") for _ in range(5)]
    payload = b"\n".join(lines) + b"\n"
    record.inject_at = time.monotonic()
    with connect_unix(chaos.target.control, TIMEOUT) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        data = _read_to_eof(sock)
    _check_alive(chaos.target, "garbage")
    answers = [json.loads(line) for line in data.splitlines() if line.strip()]
    if any(answer.get("ok") for answer in answers):
        raise FaultProblem(f"garbage was taken for a command: {answers}")


def _read_to_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while len(data) < limit and (chunk := sock.recv(65536)):
            data += chunk
    return data


def oversized_line(chaos: Chaos, record: FaultRecord) -> None:
    rng = chaos.rng
    size = rng.choice([MAX_LINE + 1, 4 * MAX_LINE, 32 * MAX_LINE])
    payload = b'{"v": 1, "cmd": "status", "x": "' + b"a" * size + b'"}'
    payload += b"\n" if rng.random() < 0.5 else b""
    record.inject_at = time.monotonic()
    with connect_unix(chaos.target.control, TIMEOUT) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        data = _read_to_eof(sock)
    _check_alive(chaos.target, f"a line of {size} bytes")
    if b'"ok": true' in data:
        # The 64 KiB check is on the part of a line still waiting for its newline:
        # a line just over it whose end comes in the next read is served (a note).
        record.notes.append(f"a line of {size} + 35 bytes was answered ok")
    if not data:
        record.notes.append("an oversized line was dropped without an answer")


def never_reading(chaos: Chaos, record: FaultRecord) -> None:
    """A client that sends requests and never reads: the manager must drop it (or stop
    reading it) and go on; a status right after takes the fd number it had."""
    target = chaos.target
    sock = connect_unix(target.control, TIMEOUT, rcvbuf=4096)
    sock.setblocking(False)
    chunk = b'{"v": 1, "cmd": "help"}\n' * 64
    record.inject_at = time.monotonic()
    outcome = "still connected after 20,000 requests"
    try:
        for _ in range(20000 // 64):
            if not select.select([], [sock], [], 2.0)[1]:
                outcome = "no longer read (held back)"
                break
            try:
                sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                outcome = "dropped"
                break
        target.status()  # while it may still be connected
    finally:
        sock.close()
    record.notes.append(f"never-reading client {outcome}")
    target.status()
    _check_alive(target, "a client that never reads")


def idle_connections(chaos: Chaos, record: FaultRecord) -> None:
    target = chaos.target
    socks: list[socket.socket] = []
    record.inject_at = time.monotonic()
    try:
        with contextlib.suppress(OSError):
            for _ in range(chaos.idle):
                socks.append(connect_unix(target.control, 2.0))
        if len(socks) < chaos.idle:
            record.notes.append("idle clients past a cap were not accepted")
        try:
            answer = target.status()
            record.notes.append(
                f"status with {len(socks)} idle: " + ("ok" if answer.get("ok") else "refused")
            )
        except ManagerGone:
            _check_alive(target, f"{len(socks)} idle connections")
            record.notes.append(f"status with {len(socks)} idle: no answer")
    finally:
        for sock in socks:
            sock.close()
    _check_alive(target, f"{len(socks)} idle connections")


# Notify datagrams from another uid ---------------------------------------------------------

FLOOD = """
import socket, sys
address, count = sys.argv[1], int(sys.argv[2])
address = "\\0" + address[1:] if address.startswith("@") else address
sent = refused = 0
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    for i in range(count):
        try:
            sock.sendto(b"READY=1\\nSTATUS=chaos %d" % i, address)
            sent += 1
        except OSError:
            refused += 1
print(sent, refused)
"""


def notify_address(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next(item for item in environ if item.startswith(b"NOTIFY_SOCKET="))
    return value.partition(b"=")[2].decode()


def notify_flood(chaos: Chaos, record: FaultRecord) -> None:
    """Datagrams from uid 65534 while a reload client that never reads is subscribed
    to the log (each datagram used to become a progress line to it), then a status."""
    target = chaos.target
    address = notify_address(target.active_pid())
    started = log(target).count("started")
    target.set_mode("hang")
    subscriber = connect_unix(target.control, TIMEOUT, rcvbuf=4096)
    try:
        subscriber.sendall(RELOAD)
        log(target).wait_count("started", started)
        hanging = log(target).last_started
        record.inject_at = time.monotonic()
        flood = subprocess.run(
            ["/usr/bin/python3", "-c", FLOOD, address, str(chaos.flood)],
            user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True,
            timeout=TIMEOUT, cwd="/",
        )  # fmt: skip
        sent, refused = [*flood.stdout.split(), "?", "?"][:2]
        record.notes.append("flood from uid 65534: " + ("refused" if sent == "0" else "sent"))
        target.status()
    finally:
        target.set_mode("serve")
        subscriber.close()
    with contextlib.suppress(ProcessLookupError):
        os.kill(hanging, signal.SIGKILL)  # spares the wait for --ready-timeout
    _check_alive(target, f"{sent} notify datagrams from uid 65534 ({refused} refused)")
