"""A library-mode server for tests/test_library_faults.py, configured by a JSON
file read at every start (rewriting it deploys "the next version")::

    {"report": PATH,          # "<what> <pid>" datagrams go to this unix socket
     "hang": false,           # never ready: a successor still starting
     "worker": false,         # fork a worker that keeps the listening socket
     "drain_forever": false,  # told to stop, never finish: only the hammer ends it
     "block": null,           # a hook that blocks for ever once called
     "drain_timeout": 1.0, "pid_file": null}

It reports "start", "worker", "ready", "blocked-<hook>" as it gets there.
"""

import json
import os
import select
import socket
import sys
import threading

from gapless import Upgrader

with open(sys.argv[1]) as file:
    config = json.load(file)


def report(what: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"{what} {os.getpid()}".encode(), config["report"])


def block(*args: object) -> None:
    report(f"blocked-{config['block']}")
    threading.Event().wait()


report("start")
if config.get("hang"):
    threading.Event().wait()

with Upgrader(
    drain_timeout=config.get("drain_timeout", 1.0), pid_file=config.get("pid_file")
) as up:
    if config.get("block"):
        getattr(up.hooks, config["block"]).append(block)
    up.listen("web=127.0.0.1:0")
    if config.get("worker") and os.fork() == 0:
        report("worker")
        while True:
            select.select([], [], [])
    up.ready()
    report("ready")
    up.wait_stopping()
    if config.get("drain_forever"):
        threading.Event().wait()
