"""The demo: a standard-library HTTP server in library mode, and ``gapless demo``."""
