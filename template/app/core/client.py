"""The client's address: the socket peer, or the address a trusted proxy forwarded for."""

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

# The peer is unknown only on transports without sockets (some test clients).
UNKNOWN_ADDRESS = "unknown"
# The longest text form of an IP address (IPv6 with an embedded IPv4 address).
ADDRESS_MAX_LENGTH = 45


def _parse(text: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAddresses:
    """Decides which address a request comes from.

    A request from one of `trusted_proxies` is taken to come from the rightmost address of
    its X-Forwarded-For that is not itself a trusted proxy: each proxy appends the peer it
    saw, so the entries left of that one were written by the client and prove nothing.
    From anyone else the header is ignored, so a client cannot choose its own address.
    """

    def __init__(self, trusted_proxies: Sequence[IPv4Network | IPv6Network]) -> None:
        self._trusted = tuple(trusted_proxies)

    def _is_trusted(self, address: IPv4Address | IPv6Address) -> bool:
        return any(address in network for network in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        address = None if peer is None else _parse(peer)
        if address is None:
            return UNKNOWN_ADDRESS
        if not self._trusted or not self._is_trusted(address):
            return str(address)
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        for hop in reversed(hops):
            forwarded = _parse(hop)
            if forwarded is None:
                # Not an address: nothing left of it can be trusted either.
                break
            address = forwarded
            if not self._is_trusted(address):
                break
        return str(address)
