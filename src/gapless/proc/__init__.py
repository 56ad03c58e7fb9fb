"""Processes: spawning with fds in place, exit statuses, /proc, signals, PID files."""
