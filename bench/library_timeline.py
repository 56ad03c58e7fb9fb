"""Library mode's upgrade timeline beside the demo's cold start, without load.

    .venv/bin/python bench/library_timeline.py [--starts 3] [--upgrades 5]

Plays systemd (a NOTIFY_SOCKET that follows MAINPID): cold start is spawn to
READY=1; an upgrade is SIGUSR2 to the successor's READY=1 as relayed by the old
process (MAINPID=, READY=1), then to the old process's exit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import start, wait_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--upgrades", type=int, default=5)
    args = parser.parse_args()
    cold, ready, exited = [], [], []
    for _ in range(args.starts):
        began = time.monotonic()
        server = start([sys.executable, "-m", "gapless.demo", "--quiet", "--bind", "127.0.0.1:0"])
        cold.append(time.monotonic() - began)
        try:
            for _ in range(args.upgrades):
                old, began = server.main_pid, time.monotonic()
                server.upgrade()
                ready.append(time.monotonic() - began)
                wait_exit(old)
                exited.append(time.monotonic() - began)
        finally:
            server.stop()
    for label, values in [
        ("cold start, spawn to READY=1", cold),
        ("SIGUSR2 to the successor's READY=1", ready),
        ("SIGUSR2 to the old process's exit", exited),
    ]:
        print(
            f"{label:38} median {statistics.median(values) * 1000:4.0f} ms "
            f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}, n={len(values)})"
        )


if __name__ == "__main__":
    main()
