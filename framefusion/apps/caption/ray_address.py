"""The cluster address of `caption --engine ray --address`, checked before Ray is asked to join it: ray.init waits
minutes for a head that is not there."""

from __future__ import annotations

import socket

from framefusion.errors import InputError

# How long a cluster's head may take to accept a connection before the address is called unreachable.
CONNECT_SECONDS = 5.0


def check_ray_address(address: str) -> None:
    """Refuse a cluster address nothing answers at: ray.init waits minutes for a head that is not there."""
    if address == "auto":  # Ray finds the running instance itself, and says at once when there is none
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError("is not a Ray address: use auto, host:port (a head's GCS, port 6379) or ray://host:10001",
                         setting="address", value=address)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise InputError(f"no Ray cluster answers there ({reason}); start one with `ray start --head`, or check the "
                         "address", setting="address", value=address) from error
