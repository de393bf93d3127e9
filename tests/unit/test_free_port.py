"""Ports for the servers tests and `promptgen up` start: free, and out of outgoing connections' way."""

from __future__ import annotations

import socket

from services.cli.embedded import _outgoing_ports, free_port


def test_a_free_port_is_below_the_range_outgoing_connections_take_theirs_from():
    """One from that range could be handed to any connection between the check and the server's bind."""
    low, _ = _outgoing_ports()
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= p < low for p in ports) and len(ports) > 1
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free indeed
