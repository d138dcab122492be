"""callback_url checks: internal addresses, odd URL shapes and DNS tricks are refused."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from llmq.worker.webhooks.callback_guard import (
    AllowList,
    CallbackRefused,
    PinnedTarget,
    check_url_shape,
    is_forbidden_address,
    resolve_and_check,
    system_resolve,
)

FAKE_DNS = {
    "evil.example": ["127.0.0.1"],
    "mixed.example": ["93.184.215.14", "10.0.0.5"],
    "public.example": ["93.184.215.14"],
    "v6only.example": ["2606:4700::1111"],
    "mapped.example": ["::ffff:169.254.169.254"],
}


def fake_resolve(host: str, port: int) -> list[str]:
    """No network in tests: known names only, and literals as the system resolver would."""
    if host in FAKE_DNS:
        return FAKE_DNS[host]
    if host == "localhost" or host[0].isdigit() or ":" in host:
        return system_resolve(host, port)
    raise OSError(f"unknown host {host}")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "IPv6 form of 127.0.0.1"),
        ("http://[::ffff:7f00:1]/", "IPv6 form of 127.0.0.1"),
        ("http://[2002:7f00:1::]/", "IPv6 form of 127.0.0.1"),
        ("http://[64:ff9b::a9fe:a9fe]/", "IPv6 form of 169.254.169.254"),
        ("http://[::7f00:1]/", "reserved"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://2130706433/", "non-standard"),
        ("http://0x7f000001/", "non-standard"),
        ("http://127.1/", "non-standard"),
        ("http://0177.0.0.1/", "non-standard"),
        ("http://100.64.0.1/", "shared"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://224.0.0.1/", "multicast"),
        ("http://255.255.255.255/", "address"),
        ("http://evil.example/", "resolves to 127.0.0.1"),
        ("http://mixed.example/", "resolves to 10.0.0.5"),
        ("http://mapped.example/", "169.254.169.254"),
        ("http://nowhere.example/", "does not resolve"),
        ("file:///etc/passwd", "http:// or https://"),
        ("ftp://example.com/x", "http:// or https://"),
        ("gopher://x", "http:// or https://"),
        ("//example.com/x", "http:// or https://"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http://evil.example\\@93.184.215.14/", "user name or password"),
        ("http:///nohost", "no host"),
        ("http://public.example:99999/", "invalid port"),
        ("http://public.example:0/", "invalid port"),
        ("http://public.example/a\nb", "control characters"),
        ("http://bad_%31.example/", "not a valid hostname"),
        ("http://public.example/" + "a" * 2048, "longer than"),
    ],
)
def test_refused(url: str, why: str) -> None:
    with pytest.raises(CallbackRefused, match=why) as caught:
        resolve_and_check(url, AllowList.none(), resolve=fake_resolve)
    assert isinstance(caught.value, ValueError)


def test_refusal_names_the_way_out() -> None:
    with pytest.raises(CallbackRefused) as caught:
        resolve_and_check("http://10.0.0.1/", AllowList.none(), resolve=fake_resolve)
    assert str(caught.value) == (
        "callback_url host 10.0.0.1 is a private address; callbacks may only go to public addresses "
        "(or hosts in LLMQ_CALLBACK_ALLOW)"
    )


def test_default_resolver_refuses_numeric_loopback_forms() -> None:
    for url in ("http://127.0.0.1/", "http://localhost/", "http://2130706433/", "http://[::1]/"):
        with pytest.raises(CallbackRefused):
            resolve_and_check(url, AllowList.none())


def test_public_name_is_pinned_to_the_checked_address() -> None:
    target = resolve_and_check("http://Public.Example:8080/hook?a=1&b=2#frag", AllowList.none(), fake_resolve)
    assert target == PinnedTarget(
        url="http://Public.Example:8080/hook?a=1&b=2#frag",
        scheme="http",
        host="public.example",
        port=8080,
        path_and_query="/hook?a=1&b=2",
        address="93.184.215.14",
    )
    assert target.request_url == "http://93.184.215.14:8080/hook?a=1&b=2"
    assert target.host_header == "public.example:8080"


@pytest.mark.parametrize(
    ("url", "request_url", "host_header"),
    [
        ("https://public.example", "https://93.184.215.14:443/", "public.example"),
        ("https://public.example:443/x", "https://93.184.215.14:443/x", "public.example"),
        ("http://public.example:80?q", "http://93.184.215.14:80/?q", "public.example"),
        ("https://[2606:4700::1111]:8443/h", "https://[2606:4700::1111]:8443/h", "[2606:4700::1111]:8443"),
        ("https://v6only.example/h", "https://[2606:4700::1111]:443/h", "v6only.example"),
        ("http://[::ffff:93.184.215.14]/", "http://[::ffff:5db8:d70e]:80/", "[::ffff:93.184.215.14]"),
    ],
)
def test_accepted(url: str, request_url: str, host_header: str) -> None:
    target = resolve_and_check(url, AllowList.none(), resolve=fake_resolve)
    assert (target.request_url, target.host_header) == (request_url, host_header)


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:8000/cb", "127.0.0.0/8"),
        ("http://localhost:8000/cb", "localhost"),
        ("http://LOCALHOST/cb", "localhost"),
        ("http://localhost/cb", "127.0.0.0/8"),
        ("http://[::1]/cb", "::1"),
        ("http://[::ffff:127.0.0.1]/cb", "127.0.0.0/8"),
        ("http://evil.example/cb", " hooks.internal.example , evil.example "),
        ("http://10.1.2.3/cb", "10.0.0.0/8"),
    ],
)
def test_allow_list_lets_operators_reach_internal_hosts(url: str, allow: str) -> None:
    target = resolve_and_check(url, AllowList.parse(allow), resolve=fake_resolve)
    assert target.address in {"127.0.0.1", "::1", "::ffff:7f00:1", "10.1.2.3"}


def test_allow_list_is_exact() -> None:
    allow = AllowList.parse("localhost,127.0.0.1,[::1]")
    assert allow.allows_host("LocalHost")
    assert not allow.allows_host("localhost.evil.example")
    assert allow.allows_address(ip_address("127.0.0.1"))
    assert not allow.allows_address(ip_address("127.0.0.2"))
    assert allow.allows_address(ip_address("::1"))
    with pytest.raises(CallbackRefused, match="private"):
        resolve_and_check("http://10.0.0.1/", allow, resolve=fake_resolve)


@pytest.mark.parametrize("spec", ["http://localhost", "10.0.0.0/33", "a b", "*.example.com"])
def test_allow_list_rejects_garbage(spec: str) -> None:
    with pytest.raises(ValueError, match="LLMQ_CALLBACK_ALLOW"):
        AllowList.parse(spec)


def test_allow_list_empty() -> None:
    assert AllowList.parse(None) == AllowList.parse(" , ") == AllowList.none()


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("93.184.215.14", False),
        ("8.8.8.8", False),
        ("2606:4700::1111", False),
        ("::ffff:8.8.8.8", False),
        ("2002:808:808::1", False),
        ("64:ff9b::808:808", False),
        ("0.1.2.3", True),
        ("192.0.2.1", True),
        ("198.18.0.1", True),
        ("240.0.0.1", True),
        ("::", True),
        ("fc00::1", True),
        ("fd12:3456::1", True),
        ("fec0::1", True),
        ("ff0e::1", True),
        ("2001:db8::1", True),
        ("64:ff9b:1::1", True),
        ("::ffff:10.0.0.1", True),
    ],
)
def test_is_forbidden_address(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(ip_address(address)) is forbidden


def test_check_url_shape_returns_the_parts() -> None:
    parts = check_url_shape("https://hooks.example.com:8443/a?b=c")
    assert (parts.scheme, parts.hostname, parts.port, parts.path, parts.query) == (
        "https",
        "hooks.example.com",
        8443,
        "/a",
        "b=c",
    )
