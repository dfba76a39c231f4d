"""Ray for the workstation tools (``vla-sim --sweep``, ``vla-replay LOGS_DIR --ray``): one way to join a
cluster or start an embedded local one, quietly, with one-line errors."""

from __future__ import annotations

from .errors import VlaError, one_line

#: Local Ray's object store: results are small, so a small store (Ray's default takes 30 % of RAM).
OBJECT_STORE_BYTES = 256 * 1024 * 1024
LOCAL = "local"  # the address that means "an embedded local Ray"


def start_ray(address: str | None, workers: int, flag: str = "--ray", local: str = "--ray alone") -> bool:
    """Connect to Ray: a cluster at ``address``, else (None or ``local``) an embedded local one with a CPU per
    worker, no dashboard, quiet. True when this call started it (the caller shuts it down). ``flag`` is the
    option the user gave the address with and ``local`` how they ask for a local Ray, for the errors."""
    import ray

    quiet_ray()
    if ray.is_initialized():
        return False
    if address and address != LOCAL:
        check_reachable(address, flag, local)
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise VlaError(f"{flag} {address}: cannot connect to a Ray cluster there "
                           f"({one_line(exc, 200)}); give the head's address (ray start --head "
                           f"prints it), or {local} for a local Ray") from None
    else:
        ray.init(num_cpus=max(1, workers), include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 object_store_memory=OBJECT_STORE_BYTES, configure_logging=False)
    return True


def check_reachable(address: str, flag: str = "--ray", local: str = "--ray alone") -> None:
    """A ``HOST:PORT`` nobody listens on is a one-line error in seconds: ``ray.init`` would retry for
    minutes. Other forms (``auto``, ``ray://…``) are Ray's to resolve."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=3.0).close()
    except OSError as exc:
        raise VlaError(f"{flag} {address}: no Ray head answers there ({exc.strerror or exc}); give the head's "
                       f"address (ray start --head prints it), or {local} for a local Ray") from None


def quiet_ray() -> None:
    """Ray's and Ray Data's notices (start-up, deprecations, execution plans) off the user's stderr: the
    tool's own summary is what they read, and only a real failure there may say "error"."""
    import logging

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
