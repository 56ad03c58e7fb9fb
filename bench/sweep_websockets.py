"""Sweep: open WebSockets across a reload, through ``gapless serve``'s child.

For each count N, N clients (wsproto, as tests/serve_harness.py) open a WebSocket
to generation 1 (``python -m gapless.serving.child``, uvicorn inside,
tests/apps/serve_app.py) and get its ``hello``. Then generation 2 starts on the
same socket, says READY=1, and generation 1 gets SIGTERM, as ``gapless run``
does. Every client should be told ``restarting`` and then closed with 1012
(service restart, so it reconnects), none with 1006 (the connection cut without
a close frame). Counted per N: close codes, the time from SIGTERM to the last
close frame, and generation 1's exit.

    .venv/bin/python bench/sweep_websockets.py                  # 1 10 100 1000
    .venv/bin/python bench/sweep_websockets.py --counts 10000
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import serve_harness
from serve_harness import Handover, open_websockets, pump_websockets, runner_argv


def low_fds(count: int = 16) -> list[int]:
    """Hold ``count`` low fd numbers; closed before the handover, they go to its pidfd
    and pipes, which the harness select()s on (select takes fds below 1024 only)."""
    return [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def one(count: int, grace: float) -> tuple[Counter[int], int, float, float, int]:
    """Close codes (1006 for a connection ended without a close frame), clients told
    ``restarting``, seconds from SIGTERM to the last close and to the exit, and
    generation 1's exit code."""
    options = (
        "--ws-grace",
        str(grace),
        "--limit-concurrency",
        str(count + 100),
        "--log-level",
        "warning",
    )
    with Handover(runner_argv("serve_app:app", *options)) as handover:
        first = handover.start()
        reserved = low_fds()
        clients = open_websockets(handover.port, count)
        for fd in reserved:
            os.close(fd)
        handover.start()  # generation 2 is READY; generation 1 has SIGTERM
        terminated = time.monotonic()
        pump_websockets(clients, lambda client: client.close_code is not None)
        closed = time.monotonic()
        for client in clients:
            client.sock.close()
        status = first.wait(60 + count / 100)
        exited = time.monotonic()
    codes = Counter(1006 if c.close_code is None else c.close_code for c in clients)
    told = sum(c.texts == ["hello", "restarting"] for c in clients)
    code = -1 if status is None else status.returncode
    return codes, told, closed - terminated, exited - terminated, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--grace", type=float, default=0.5, help="gapless's --ws-grace")
    args = parser.parse_args()
    raise_nofile(max(args.counts) * 2 + 256)
    serve_harness.TIMEOUT = 60 + max(args.counts) / 100  # opening 10,000 takes a while
    print("websockets  told  1012  1006  other  last close after TERM, s  exit after TERM, s  code")
    for count in args.counts:
        codes, told, closed, exited, code = one(count, args.grace)
        other = sum(n for c, n in codes.items() if c not in (1012, 1006))
        print(
            f"{count:10}  {told:4}  {codes[1012]:4}  {codes[1006]:4}  {other:5}"
            f"  {closed:24.2f}  {exited:18.2f}  {code:4}"
        )


if __name__ == "__main__":
    main()
