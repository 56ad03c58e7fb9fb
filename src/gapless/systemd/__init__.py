"""systemd's protocols, both ends: LISTEN_FDS, NOTIFY_SOCKET and the fd store."""
