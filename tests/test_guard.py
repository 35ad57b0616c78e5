"""Local only: endpoints off the operator's machines are refused before any byte is sent."""

from __future__ import annotations

import httpx
import pytest

from pantheon.core import EndpointRefused
from pantheon.core.model.client import LLMClient
from pantheon.core.model.guard import check_endpoint, is_local_address


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8011",
        "http://127.5.6.7:8011/v1",
        "http://[::1]:8011",
        "http://10.0.0.5:8000",
        "http://192.168.1.20:8000",
        "http://172.16.3.4",
        "http://[fd12:3456::1]:8000",
        "http://[fe80::1]:8000",
        "http://[::ffff:127.0.0.1]:8000",
    ],
)
def test_loopback_and_private_addresses_pass(url):
    assert check_endpoint(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8:8000",
        "https://1.1.1.1/v1",
        "http://[2001:4860:4860::8888]:443",
        "http://[::ffff:8.8.8.8]:80",
        "http://0.0.0.0:8011",
    ],
)
def test_public_addresses_are_refused_with_the_reason(url):
    with pytest.raises(EndpointRefused, match="not loopback or a private address"):
        check_endpoint(url)


def test_a_hostname_is_judged_by_every_address_it_resolves_to():
    def resolver(host):
        return {"gpu.lan": ["192.168.1.9"], "api.example": ["10.0.0.1", "93.184.216.34"]}[host]

    assert check_endpoint("http://gpu.lan:8000", resolver=resolver) == "gpu.lan:8000"
    with pytest.raises(EndpointRefused, match=r"93\.184\.216\.34"):
        check_endpoint("http://api.example", resolver=resolver)


def test_localhost_resolves_to_loopback():
    assert check_endpoint("http://localhost:8011") == "localhost:8011"


def test_the_allow_list_lets_a_named_host_through():
    def resolver(host):
        return ["203.0.113.7"]

    with pytest.raises(EndpointRefused):
        check_endpoint("https://gpu.mylab.org", resolver=resolver)
    assert check_endpoint("https://gpu.mylab.org", allow=["GPU.mylab.org"], resolver=resolver)


def test_unresolvable_and_non_http_endpoints_are_refused():
    def resolver(host):
        raise OSError("Name or service not known")

    with pytest.raises(EndpointRefused, match="cannot resolve"):
        check_endpoint("http://nowhere.invalid", resolver=resolver)
    with pytest.raises(EndpointRefused, match="not an http"):
        check_endpoint("ftp://127.0.0.1/")


def test_is_local_address():
    assert is_local_address("127.0.0.1") and is_local_address("::1")
    assert not is_local_address("8.8.4.4")


async def test_the_client_sends_nothing_to_a_public_endpoint():
    sent = []

    def handler(request):
        sent.append(request)
        return httpx.Response(200, json={})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    with pytest.raises(EndpointRefused):
        LLMClient("http://8.8.8.8:8000", http=http)
    await http.aclose()
    assert sent == []
