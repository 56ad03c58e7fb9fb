"""A server with faults to order, for tests/test_faults_*.py, under ``gapless run``.

It answers HTTP/1.0 ``GET`` on fd 3 (LISTEN_FDS) with ``pid <PID>``, one request
at a time, and reports READY=1. Options pick the fault:

  --import-error         fail at import, as a deploy with a broken module does
  --never-ready          never report READY=1 and never accept
  --exit-after-ready N   report READY=1, then exit with code N at once
  --crash-after S        serve S seconds after READY=1, then exit 1 between requests
  --once PATH            have the fault above only if PATH does not exist yet
  --on-term MODE         drain (default): stop accepting and exit 0;
                         hang: stop accepting, then ignore SIGTERM for ever;
                         exit-later:S: stop accepting, exit 1 S seconds later
  --fork-worker PATH     fork a worker first that ignores SIGTERM and stays in the
                         process group; its pid goes to PATH
  --ready-on-usr1        send READY=1 again on each SIGUSR1 (then say "sent READY=1")

Every change of state is one line on stderr ("stopped accepting"), for tests to
wait on. A stop signal is seen through a wakeup fd, so the accept loop wakes
for it and a request being answered is always finished first.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import time

from gapless.systemd.notify import ready


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--import-error", action="store_true")
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--exit-after-ready", type=int)
    parser.add_argument("--crash-after", type=float)
    parser.add_argument("--once")
    parser.add_argument("--on-term", default="drain")
    parser.add_argument("--fork-worker")
    parser.add_argument("--ready-on-usr1", action="store_true")
    args = parser.parse_args()
    if args.once is not None:
        if os.path.exists(args.once):
            args.import_error = args.never_ready = False
            args.exit_after_ready = args.crash_after = None
        else:
            open(args.once, "w").close()
    return args


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def fork_worker(path: str) -> None:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            signal.pause()
    with open(path + ".tmp", "w") as file:
        file.write(str(pid))
    os.replace(path + ".tmp", path)


def answer(listener: socket.socket) -> None:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return  # the other generation took it
    with conn:
        conn.setblocking(True)
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        body = f"pid {os.getpid()}".encode()
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode() + body)


def serve(listener: socket.socket, wake: socket.socket, crash_at: float | None) -> None:
    """Accept until SIGTERM; exit 1 at ``crash_at`` (between two requests); READY=1
    again on SIGUSR1."""
    while True:
        timeout = None if crash_at is None else max(0.0, crash_at - time.monotonic())
        readable = select.select([listener, wake], [], [], timeout)[0]
        if crash_at is not None and time.monotonic() >= crash_at:
            say("crashing")
            os._exit(1)
        if wake in readable:
            received = wake.recv(64)  # the wakeup fd carries the signal numbers
            if signal.SIGUSR1 in received:
                ready()
                say("sent READY=1")
            if signal.SIGTERM in received:
                return
        if listener in readable:
            answer(listener)


def after_term(listener: socket.socket, mode: str) -> None:
    listener.close()
    say("stopped accepting")
    if mode == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            signal.pause()
    if mode.startswith("exit-later:"):
        select.select([], [], [], float(mode.partition(":")[2]))  # the fault's own timing
        say("exiting in the middle of the drain")
        sys.exit(1)
    sys.exit(0)


def main() -> None:
    args = parse()
    if args.fork_worker:
        fork_worker(args.fork_worker)
    if args.import_error:
        import gapless_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    if args.never_ready:
        while True:
            signal.pause()
    listener = socket.socket(fileno=3)
    listener.setblocking(False)
    wake, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno())
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if args.ready_on_usr1:
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    ready()
    if args.exit_after_ready is not None:
        say("exiting right after READY=1")
        sys.exit(args.exit_after_ready)
    crash_at = None if args.crash_after is None else time.monotonic() + args.crash_after
    serve(listener, wake, crash_at)
    after_term(listener, args.on_term)


main()
