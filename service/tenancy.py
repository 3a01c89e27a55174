"""Who a request comes from, and how much of the shared capacity one client may hold.

The queues and the memory budget are shared by every client; without a per-client cap one
client looping requests fills them and every other client is answered 503. A client is the
peer address of the connection, or the first address of ``X-Forwarded-For`` when the peer is
one of ``trusted_proxies`` (a header from anyone else is ignored: it is the client's own
claim). ``CCNET_API_KEY`` is one shared key, so it names no tenant.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable

from starlette.requests import HTTPConnection

__all__ = ["ClientShareError", "ClientShares", "TrustedProxies", "client_id"]


class TrustedProxies:
    """Addresses and networks whose ``X-Forwarded-For`` is believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]

    def __contains__(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


def client_id(connection: HTTPConnection, proxies: TrustedProxies) -> str:
    """The client a request counts against (see the module doc)."""
    peer = connection.client.host if connection.client else "unknown"
    if peer in proxies:
        forwarded = connection.headers.get("x-forwarded-for", "")
        # each proxy appends the address it saw: the client is the last hop that is not a
        # trusted proxy (or the first hop when every hop is one: a proxy that writes the
        # header afresh, as docker/nginx.conf does, behind a catch-all trusted network)
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        untrusted = [hop for hop in hops if hop not in proxies]
        if untrusted:
            return untrusted[-1][:64]
        if hops:
            return hops[0][:64]
    return peer


class ClientShareError(RuntimeError):
    """The client holds as much as one client may."""


class ClientShares:
    """What each client holds now (requests, bytes), up to ``limit`` each (thread-safe).

    Args:
        limit: what one client may hold at once.
        describe: words for an amount in the refusal, e.g. ``lambda n: f"{n} clips"``.
        fair_total: the capacity the clients share (a queue's size), if any: each client's
            limit is then also its fair part of it, ``fair_total`` divided by the clients
            holding something (a newcomer counted), so a queue full of a few clients' work
            drains towards a newcomer instead of refilling with theirs.
    """

    def __init__(
        self, limit: int, describe: Callable[[int], str], fair_total: int | None = None
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.fair_total = fair_total
        self._describe = describe
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def _limit(self, client: str) -> int:
        if self.fair_total is None:
            return self.limit
        clients = len(self._held) + (client not in self._held)
        return min(self.limit, max(1, self.fair_total // clients))

    def take(self, client: str, amount: int = 1) -> None:
        """Hold ``amount`` more for ``client``; ``ClientShareError`` past its limit."""
        with self._lock:
            held = self._held.get(client, 0)
            limit = self._limit(client)
            if held + amount > limit:
                raise ClientShareError(
                    f"this client already holds {self._describe(held)} of the "
                    f"{self._describe(limit)} one client may hold at once now"
                )
            self._held[client] = held + amount

    def give(self, client: str, amount: int = 1) -> None:
        """Return what ``take`` held."""
        with self._lock:
            held = self._held.get(client, 0) - amount
            if held > 0:
                self._held[client] = held
            else:
                self._held.pop(client, None)

    def held(self, client: str) -> int:
        with self._lock:
            return self._held.get(client, 0)
