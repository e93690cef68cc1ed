"""free_port_block: consecutive ports for processes that take several (a stack, Triton);
free_ports: distinct ones, held until all are picked."""

from __future__ import annotations

import contextlib
import socket

from infra.local.ports import free_port_block, free_ports


def test_every_port_of_the_block_can_be_bound() -> None:
    first = free_port_block(7)
    assert first + 7 <= 65536
    with contextlib.ExitStack() as held:
        for port in range(first, first + 7):
            held.enter_context(socket.socket()).bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", port))
