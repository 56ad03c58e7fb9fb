"""Sockets: bind addresses, listeners opened or adopted, passing them between processes."""
