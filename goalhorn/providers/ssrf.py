"""SSRF guard for webhooks: a subscriber's URL must not reach into our own network.

A webhook URL is chosen by whoever registers the endpoint, so before connecting we refuse
loopback, private, link-local (cloud metadata lives at 169.254.169.254), shared CGNAT,
unique-local, multicast, unspecified and reserved addresses, including IPv4 addresses wrapped
in IPv6 (mapped, 6to4, NAT64). The check sits in :class:`VettingResolver`, the resolver the HTTP
connector uses, so the address that was checked is the address connected to: a second DNS
answer cannot swap in a private one (DNS rebinding). IP literals never reach a resolver, so
:meth:`AddressPolicy.check_url` checks those. ``Settings.webhook_allowlist`` opens chosen hosts
and CIDRs, e.g. the local sandbox receiver.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from goalhorn.errors import AddressRefused, ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be a webhook target (``"loopback"``, ``"private"``, ...), or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            # An IPv6 form of an IPv4 address is judged as that IPv4 address.
            return refusal_reason(embedded)
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "cgnat"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL:
        return "unique_local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not_global"
    return None


def parse_ip(text: str) -> IPAddress | None:
    """``text`` as an IP address (brackets and an IPv6 zone allowed), or None for a host name."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which webhook targets are allowed: every public address, plus the allowlisted hosts and networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_allowlist(cls, allowlist: str) -> AddressPolicy:
        """Parse ``Settings.webhook_allowlist``: comma-separated host names, IP addresses and CIDRs."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allowlist.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if "/" in entry or parse_ip(entry) is not None:
                try:
                    networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                except ValueError as exc:
                    raise ConfigError(f"webhook_allowlist entry {entry!r} is not a valid CIDR") from exc
            else:
                hosts.add(_normal_host(entry))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return _normal_host(host) in self.hosts

    def _allowlisted(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(addr in net for addr in candidates for net in self.networks if addr.version == net.version)

    def check_ip(self, ip: IPAddress, host: str = "") -> None:
        """Raise :class:`AddressRefused` unless ``ip`` (reached as ``host``) is public or allowlisted."""
        reason = refusal_reason(ip)
        if reason is None or (host and self.allows_host(host)) or self._allowlisted(ip):
            return
        via = f" (from {host})" if host and parse_ip(host) is None else ""
        raise AddressRefused(f"{reason} address {ip}{via}")

    def check_url(self, url: str | URL) -> URL:
        """Check what can be checked before connecting: the scheme, and the host if it is an IP literal.

        Host names are checked when they resolve, by :class:`VettingResolver`.
        """
        parsed = url if isinstance(url, URL) else URL(url)
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise AddressRefused(f"scheme {parsed.scheme or '(none)'!r} is not http or https")
        host = parsed.raw_host
        if not host:
            raise AddressRefused("URL has no host")
        ip = parse_ip(host)
        if ip is not None:
            self.check_ip(ip, host)
        return parsed


class VettingResolver(AbstractResolver):
    """An aiohttp resolver that returns only the addresses the policy allows.

    The connector connects to exactly what this returns, so checking here closes the gap between
    "checked" and "connected to". Refused addresses are dropped; if none are left the whole
    lookup fails with :class:`AddressRefused`.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = ThreadedResolver()  # needs the running loop, so made on first use
        answers = await self._inner.resolve(host, port, family)
        vetted: list[ResolveResult] = []
        first_refusal: AddressRefused | None = None
        for answer in answers:
            ip = parse_ip(answer["host"])
            try:
                if ip is None:
                    raise AddressRefused(f"resolver answered {answer['host']!r}, not an IP address")
                self._policy.check_ip(ip, host)
            except AddressRefused as exc:
                first_refusal = first_refusal or exc
                continue
            vetted.append(answer)
        if not vetted:
            raise first_refusal or AddressRefused(f"{host} has no addresses")
        return vetted

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
