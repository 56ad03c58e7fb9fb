"""Sweep: slow requests in flight across a reload, through ``gapless serve``'s child.

For each count N, generation 1 (``python -m gapless.serving.child``, uvicorn inside,
tests/apps/serve_app.py) holds N requests to ``/stream?ms=M``: each has its
response headers, its body is M ms away. Then generation 2 starts on the same
socket, says READY=1, and generation 1 gets SIGTERM, as ``gapless run`` does
(tests/serve_harness.py plays the manager). Counted: how many of the N responses
arrive whole from generation 1, the drain time (SIGTERM to generation 1's exit)
and generation 1's exit code.

    .venv/bin/python bench/sweep_slow.py                       # 1 10 100 1000, M = 2000
    .venv/bin/python bench/sweep_slow.py --counts 10000 --ms 5000
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from serve_harness import (
    Handover,
    head_complete,
    read_until,
    response_complete,
    runner_argv,
    send_requests,
)


def low_fds(count: int = 16) -> list[int]:
    """Hold ``count`` low fd numbers; closed before the handover, they go to its pidfd
    and pipes, which the harness select()s on (select takes fds below 1024 only)."""
    return [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def one(count: int, ms: int) -> tuple[int, float, float, int]:
    """Complete responses, seconds from SIGTERM to the body-due time and to the exit,
    and generation 1's exit code."""
    with Handover(
        runner_argv(
            "serve_app:app", "--limit-concurrency", str(count + 100), "--log-level", "warning"
        )
    ) as handover:
        first = handover.start()
        reserved = low_fds()
        streaming = send_requests(handover.port, count, f"/stream?ms={ms}")
        buffers: dict[socket.socket, bytes] = {}
        timeout = 60 + count / 100
        read_until(streaming, head_complete, buffers, timeout=timeout)
        due = time.monotonic() + ms / 1000  # the last body is due no earlier than this
        for fd in reserved:
            os.close(fd)
        handover.start()  # generation 2 is READY; generation 1 has SIGTERM
        terminated = time.monotonic()
        read_until(streaming, response_complete, buffers, timeout=timeout)
        for sock in streaming:
            sock.close()  # as a client done with it: idle keep-alive would hold the drain
        status = first.wait(timeout)
        exited = time.monotonic()
    complete = sum(
        buffers[sock].startswith(b"HTTP/1.1 200 ") and buffers[sock].endswith(b"pid %d" % first.pid)
        for sock in streaming
    )
    code = -1 if status is None else status.returncode
    return complete, due - terminated, exited - terminated, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--ms", type=int, default=2000, help="each request's remaining time")
    args = parser.parse_args()
    raise_nofile(max(args.counts) * 2 + 256)
    print("in flight  complete  body due after TERM, s  drain (TERM to exit), s  exit code")
    for count in args.counts:
        complete, due, drain, code = one(count, args.ms)
        print(f"{count:9}  {complete:8}  {due:22.2f}  {drain:23.2f}  {code:9}")


if __name__ == "__main__":
    main()
