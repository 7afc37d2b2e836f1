"""The HTTP/2 interop matrix: the real daemon against independent server implementations.

Each server (servers.py) runs on 127.0.0.1 on an ephemeral port, with TLS from a throw-away
trustme CA and ALPN h2, serving a folder of generated MP4-shaped files (bodies.py), once with its
default settings and once "stingy" (few concurrent streams, small windows, small or padded DATA
frames, GOAWAY every few requests). The daemon downloads every file with `http2_client = "builtin"`
and with `"h2"`, and curl downloads them as the control (clients.py); every copy must be
byte-exact. `python -m tests.interop.matrix` prints the table; tests/integration/test_interop.py
runs the light servers in CI.

Modules import each other as ``interop.*`` and the shared helpers as ``support.*``: ``tests/`` is
on the import path (pytest's ``pythonpath``, or matrix.py's own bootstrap).
"""
