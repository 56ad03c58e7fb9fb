"""A new version that cannot start: an import error on stderr, exit code 3."""

import sys

print("Traceback (most recent call last):", file=sys.stderr)
print("ImportError: cannot import name 'broken' from 'app'", file=sys.stderr)
sys.exit(3)
