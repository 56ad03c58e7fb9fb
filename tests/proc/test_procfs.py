"""The one parser of /proc/<pid>/stat."""

import os
import subprocess
import sys

from gapless.proc.procfs import all_stats, stat_fields


def test_a_command_name_with_spaces_and_parentheses_is_parsed_after_its_last_paren() -> None:
    code = (
        "import ctypes, sys; ctypes.CDLL(None).prctl(15, b'a) S 1 (b', 0, 0, 0);"
        "print('ready', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        fields = stat_fields(child.pid)
        assert fields is not None
        assert int(fields[1]) == os.getpid(), "the parent, not the 1 inside the name"
        assert dict(all_stats())[child.pid] == fields
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone_has_no_fields() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert stat_fields(child.pid) is None
