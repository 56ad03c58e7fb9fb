"""Exec the command line held in the file named by argv[1] (JSON list).

A test rewrites the file to change what the next generation runs, as a deploy
changes the code on disk; exec keeps the pid, so LISTEN_PID stays right.
"""

import json
import os
import sys

with open(sys.argv[1]) as file:
    argv = json.load(file)
os.execv(argv[0], argv)
