"""The SSRF guard on its own: address classes, the allowlist, URLs and the vetting resolver.

Nothing here connects anywhere; public addresses are only checked, never contacted.
"""

from __future__ import annotations

import ipaddress

import pytest

from goalhorn.errors import AddressRefused, ConfigError
from goalhorn.providers.ssrf import AddressPolicy, VettingResolver, refusal_reason
from tests.test_webhook import FakeResolver

NO_ALLOWLIST = AddressPolicy()

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "10.0.0.1": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link_local",
    "fe80::1": "link_local",
    "100.64.0.1": "cgnat",
    "100.127.255.254": "cgnat",
    "fc00::1": "unique_local",
    "fd12:3456::1": "unique_local",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link_local",
    "2002:7f00:1::1": "loopback",  # 6to4 wrapping 127.0.0.1
    "64:ff9b::a00:1": "private",  # NAT64 wrapping 10.0.0.1
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "ff02::1": "multicast",
    "240.0.0.1": "private",  # reserved class E; Python files it under private
    "192.0.2.10": "private",  # documentation range
    "::127.0.0.1": "reserved",  # deprecated IPv4-compatible form
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "reason"), REFUSED.items())
def test_local_and_special_addresses_are_refused(address, reason):
    ip = ipaddress.ip_address(address)
    assert refusal_reason(ip) == reason
    with pytest.raises(AddressRefused, match=reason):
        NO_ALLOWLIST.check_ip(ip)


@pytest.mark.parametrize("address", REFUSED)
def test_ip_literal_urls_are_refused(address):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(AddressRefused):
        NO_ALLOWLIST.check_url(f"http://{host}:8080/hooks/x")


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None
    host = f"[{address}]" if ":" in address else address
    checked = NO_ALLOWLIST.check_url(f"https://{host}/hooks/x")
    assert ipaddress.ip_address(checked.raw_host or "") == ipaddress.ip_address(address)


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/x", "file:///etc/passwd", "gopher://8.8.8.8/", "http:///x", "/x"])
def test_only_http_urls_with_a_host_are_allowed(url):
    with pytest.raises(AddressRefused):
        NO_ALLOWLIST.check_url(url)


def test_allowlist_by_host_name():
    policy = AddressPolicy.from_allowlist(" localhost , Hooks.Internal. ")
    policy.check_ip(ipaddress.ip_address("127.0.0.1"), "LOCALHOST")
    policy.check_ip(ipaddress.ip_address("10.1.2.3"), "hooks.internal")
    with pytest.raises(AddressRefused, match=r"from other\.internal"):
        policy.check_ip(ipaddress.ip_address("10.1.2.3"), "other.internal")


def test_allowlist_by_cidr_and_address():
    policy = AddressPolicy.from_allowlist("10.0.0.0/8,127.0.0.1,fd00::/8")
    for allowed in ("10.9.8.7", "::ffff:10.0.0.1", "127.0.0.1", "fd00::5"):
        policy.check_ip(ipaddress.ip_address(allowed))
    for refused in ("127.0.0.2", "192.168.1.1", "169.254.169.254", "fc00::1"):
        with pytest.raises(AddressRefused):
            policy.check_ip(ipaddress.ip_address(refused))
    policy.check_url("http://127.0.0.1:9000/hooks/a")


def test_a_malformed_cidr_is_a_config_error():
    with pytest.raises(ConfigError):
        AddressPolicy.from_allowlist("10.0.0.0/33")


async def test_resolver_refuses_a_name_that_resolves_to_a_private_address():
    resolver = VettingResolver(NO_ALLOWLIST, FakeResolver({"evil.example.test": ["10.0.0.5", "fd00::1"]}))
    with pytest.raises(AddressRefused, match=r"private address 10\.0\.0\.5 \(from evil\.example\.test\)"):
        await resolver.resolve("evil.example.test", 443)


async def test_resolver_returns_only_vetted_addresses():
    table = {"mixed.example.test": ["127.0.0.1", "93.184.216.34", "169.254.169.254"]}
    resolver = VettingResolver(NO_ALLOWLIST, FakeResolver(table))
    answers = await resolver.resolve("mixed.example.test", 443)
    assert [answer["host"] for answer in answers] == ["93.184.216.34"]


async def test_resolver_lets_allowlisted_hosts_and_networks_through():
    table = {"sandbox.test": ["127.0.0.1"], "lan.test": ["192.168.7.7"]}
    policy = AddressPolicy.from_allowlist("sandbox.test,192.168.0.0/16")
    resolver = VettingResolver(policy, FakeResolver(table))
    assert [a["host"] for a in await resolver.resolve("sandbox.test", 80)] == ["127.0.0.1"]
    assert [a["host"] for a in await resolver.resolve("lan.test", 80)] == ["192.168.7.7"]


@pytest.mark.parametrize("host", ["localhost", "2130706433", "0177.0.0.1", "0x7f.1"])
async def test_resolver_refuses_loopback_names_from_the_system_resolver(host):
    """``localhost`` and the legacy numeric spellings of 127.0.0.1 all resolve locally, and are refused."""
    resolver = VettingResolver(NO_ALLOWLIST)
    try:
        with pytest.raises(AddressRefused, match="loopback"):
            await resolver.resolve(host, 80)
    finally:
        await resolver.close()
