"""The gateway's live feed ends every stream when uvicorn is told to stop: it learns so from
the exit signal uvicorn's server receives (noted by sse-starlette)."""

from __future__ import annotations

import signal

import uvicorn
from sse_starlette.sse import AppStatus

from services.gateway.sse import server_exiting


def test_a_server_told_to_exit_is_seen_as_exiting():
    server = uvicorn.Server(uvicorn.Config(app=lambda *a: None))
    assert not server_exiting()
    try:
        server.handle_exit(signal.SIGTERM, None)
        assert server_exiting() and server.should_exit
    finally:
        AppStatus.should_exit = False
