"""``gapless run``: the manager with a stable PID that holds the sockets and runs
generations of any server."""
