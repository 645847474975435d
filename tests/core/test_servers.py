"""Server addresses: credentials go to headers and never into anything printable."""

from __future__ import annotations

import base64
import traceback

import pytest

from comfy_notebook.core.errors import ConfigError, ServerUnavailable
from comfy_notebook.core.servers import ServerSpec


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_userinfo_becomes_basic_auth_and_leaves_the_url() -> None:
    spec = ServerSpec.parse("http://alice:hunter2@gpu.example.com:8188")
    assert spec.url == "http://gpu.example.com:8188"
    assert spec.headers == {"Authorization": basic("alice", "hunter2")}
    for text in (repr(spec), str(spec), spec.http_url("/prompt"), spec.ws_url("abc")):
        assert "hunter2" not in text
        assert "alice" not in text
        assert "@" not in text
        assert spec.headers["Authorization"].split()[1] not in text


def test_repr_shows_only_the_url() -> None:
    spec = ServerSpec.parse("http://alice:hunter2@gpu.example.com:8188", headers={"X-Api-Key": "k-123"})
    assert repr(spec) == "ServerSpec(url='http://gpu.example.com:8188')"
    assert str(spec) == "http://gpu.example.com:8188"


def test_percent_encoded_userinfo_is_decoded() -> None:
    spec = ServerSpec.parse("https://us%40er:p%3Ass%2Fw%40rd%20x@host.example.com")
    assert spec.headers["Authorization"] == basic("us@er", "p:ss/w@rd x")
    assert spec.url == "https://host.example.com"


def test_user_without_password() -> None:
    assert ServerSpec.parse("http://alice@h:1").headers["Authorization"] == basic("alice", "")


def test_non_ascii_credentials_are_utf8_encoded() -> None:
    spec = ServerSpec.parse("http://j%C3%BCrgen:p%C3%A4ss@h")
    assert spec.headers["Authorization"] == "Basic " + base64.b64encode("jürgen:päss".encode()).decode()


def test_token_becomes_a_bearer_header_and_wins_over_userinfo() -> None:
    assert ServerSpec.parse("http://h:8188", token="t0k3n").headers == {"Authorization": "Bearer t0k3n"}
    spec = ServerSpec.parse("http://alice:hunter2@h:8188", token="t0k3n")
    assert spec.headers == {"Authorization": "Bearer t0k3n"}
    assert "t0k3n" not in repr(spec)


def test_extra_headers_are_merged_and_hidden() -> None:
    spec = ServerSpec.parse("http://h", token="t", headers={"X-Api-Key": "secret-key"})
    assert spec.headers == {"Authorization": "Bearer t", "X-Api-Key": "secret-key"}
    assert "secret-key" not in repr(spec)


def test_no_credentials_no_headers() -> None:
    assert ServerSpec.parse("http://127.0.0.1:8188").headers == {}


def test_specs_are_identified_by_url_only() -> None:
    a = ServerSpec.parse("http://alice:one@h:8188")
    b = ServerSpec.parse("http://bob:two@h:8188")
    assert a == b
    assert hash(a) == hash(b)
    assert {a, b} == {a}


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("http://127.0.0.1:8188", "http://127.0.0.1:8188"),
        ("127.0.0.1:8188", "http://127.0.0.1:8188"),
        ("  localhost:8188  ", "http://localhost:8188"),
        ("HTTP://GPU.Example.COM:8188", "http://gpu.example.com:8188"),
        ("http://h:8188/", "http://h:8188"),
        ("http://h:8188/?token=x#frag", "http://h:8188"),
        ("https://h.example.com/comfy/", "https://h.example.com/comfy"),
        ("https://h.example.com/a/b", "https://h.example.com/a/b"),
        ("http://h", "http://h"),
        ("http://[::1]:8188", "http://[::1]:8188"),
        ("http://[2001:db8::1]/prefix", "http://[2001:db8::1]/prefix"),
        ("http://user:pw@[::1]:8188", "http://[::1]:8188"),
    ],
)
def test_url_normalisation(raw: str, url: str) -> None:
    assert ServerSpec.parse(raw).url == url


def test_path_prefix_is_kept_in_http_and_ws_urls() -> None:
    spec = ServerSpec.parse("https://proxy.example.com/comfy/gpu0/")
    assert spec.http_url("/prompt") == "https://proxy.example.com/comfy/gpu0/prompt"
    assert spec.http_url("/history/abc") == "https://proxy.example.com/comfy/gpu0/history/abc"
    assert spec.ws_url("client-1") == "wss://proxy.example.com/comfy/gpu0/ws?clientId=client-1"


def test_http_maps_to_ws() -> None:
    spec = ServerSpec.parse("http://127.0.0.1:8188")
    assert spec.ws_url("abc") == "ws://127.0.0.1:8188/ws?clientId=abc"
    assert spec.http_url("/prompt") == "http://127.0.0.1:8188/prompt"


def test_ipv6_urls() -> None:
    spec = ServerSpec.parse("http://[::1]:8188")
    assert spec.http_url("/prompt") == "http://[::1]:8188/prompt"
    assert spec.ws_url("x") == "ws://[::1]:8188/ws?clientId=x"


def test_client_id_is_quoted_in_the_ws_url() -> None:
    assert ServerSpec.parse("http://h").ws_url("a b&c=d") == "ws://h/ws?clientId=a%20b%26c%3Dd"


BAD = [
    "ftp://alice:hunter2@h.example.com",
    "file://alice:hunter2@/etc/passwd",
    "http://alice:hunter2@",
    "http://alice:hunter2@h.example.com:notaport",
    "http://alice:hunter2@h.example.com:99999",
    "http://alice:hunter2@[::1",  # urlsplit raises "Invalid IPv6 URL"
    "http://alice:hunter2\uff03x@h.example.com",  # urlsplit's NFKC check quotes the whole netloc
    "alice:hunter2@h.example.com:bad",
    "http://",
    "",
]


@pytest.mark.parametrize("raw", BAD)
def test_bad_urls_raise_a_config_error_with_the_password_redacted(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerSpec.parse(raw)
    exc = info.value
    # a configuration mistake, not a server that does not answer
    assert isinstance(exc, ValueError) and not isinstance(exc, (ConnectionError, ServerUnavailable))
    printed = "".join(traceback.format_exception(exc))
    assert "hunter2" not in printed
    assert "hunter2" not in repr(exc.args)
    if "@" in raw:
        assert "***@" in str(exc)


def test_bad_url_message_says_what_is_expected() -> None:
    with pytest.raises(ConfigError, match=r"expected http\(s\)://host:port"):
        ServerSpec.parse("ftp://h")
    with pytest.raises(ConfigError, match="bad port"):
        ServerSpec.parse("http://h:port")
