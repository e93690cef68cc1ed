"""Free TCP ports for servers started side by side on one machine, and a check that a fixed
port is still free."""

from __future__ import annotations

import contextlib
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that were free a moment ago: each probe stays bound until all
    are picked, so the kernel cannot hand out one port twice (two `free_port` calls can, and a
    server then refused the same port for HTTP and gRPC)."""
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((host, 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def free_port_block(size: int, host: str = "127.0.0.1") -> int:
    """A port p such that p .. p+size-1 were all free a moment ago (for processes that take
    consecutive ports, started side by side with others).

    Raises:
        OSError: no such block turned up in 50 tries.
    """
    for _ in range(50):
        first = free_port(host)
        block = range(first, first + size)
        if block.stop > 65536:
            continue
        with contextlib.ExitStack() as probes:
            try:
                for port in block[1:]:
                    probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).bind(
                        (host, port)
                    )
            except OSError:
                continue
        return first
    raise OSError(f"found no block of {size} free ports")


def ensure_port_free(host: str, port: int) -> None:
    """Fails when something already listens on `host:port`, e.g. gateways of an earlier
    `make run`: gateways that bind with SO_REUSEPORT would otherwise join them silently and
    share the connections with stale processes.

    Raises:
        OSError: the port is taken.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        # Lets connections of a stopped server in TIME_WAIT pass; a listener still fails.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
