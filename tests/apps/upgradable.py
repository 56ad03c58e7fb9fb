"""A library-mode server for the tests, configured by a JSON file read at every start.

Rewriting the file before an upgrade is how a test deploys "the next version":
    {"binds": ["web=127.0.0.1:0"], "fail": null | "exit" | "hang",
     "drain_timeout": 30, "ready_timeout": 10, "pid_file": null, "keep_pid": false}
"""

import json
import logging
import os
import sys
import threading

from gapless import Upgrader
from gapless.demo.server import AcceptLoop, DemoServer

with open(sys.argv[1]) as file:
    config = json.load(file)
logging.basicConfig(level=logging.INFO, format=f"app[{os.getpid()}] %(message)s")

if config.get("fail") == "exit":
    print("boom: this version cannot start", file=sys.stderr, flush=True)
    sys.exit(3)
if config.get("fail") == "hang":
    print("stuck before ready", file=sys.stderr, flush=True)
    threading.Event().wait()

with Upgrader(
    drain_timeout=config.get("drain_timeout", 30.0),
    ready_timeout=config.get("ready_timeout", 10.0),
    pid_file=config.get("pid_file"),
    keep_pid=config.get("keep_pid", False),
) as upgrader:
    servers = [DemoServer(upgrader.listen(bind)) for bind in config["binds"]]
    loop = AcceptLoop(servers)
    upgrader.hooks.before_shutdown.append(loop.stop)
    upgrader.ready()
    loop.run()
    for server in servers:
        server.server_close()
