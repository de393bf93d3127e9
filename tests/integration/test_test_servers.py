"""The test servers themselves: one that died says so, with its log."""

from __future__ import annotations

import pytest

from tests.servers import MongoServer


def test_a_mongo_server_that_exited_says_so_with_the_end_of_its_log(tmp_path):
    server = MongoServer(log=tmp_path / "mongo.log").start()
    try:
        server.check()  # running: nothing to say
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(RuntimeError, match=f"port {server.port} exited with -9; its log ends"):
            server.check()
    finally:
        server.stop()
