"""The server process's trio side: listeners, admission, the shared state of all
connections, PROXY headers and host keys. ``listener.serve`` is the entry."""
