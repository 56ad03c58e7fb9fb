"""Answers each connection with the TCP_NODELAY of the socket it accepted, then closes
it: what a server that never sets the option itself (``uvicorn --fd``) gets."""

import socket

sock = socket.socket(fileno=3)
while True:
    conn, _ = sock.accept()
    nodelay = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nnodelay %d\n" % nodelay)
    conn.close()
