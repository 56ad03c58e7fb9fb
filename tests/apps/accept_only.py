"""A server that speaks no notify protocol: it only accepts on fd 3, blocking."""

import socket

sock = socket.socket(fileno=3)
while True:
    conn, _ = sock.accept()
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    conn.close()
