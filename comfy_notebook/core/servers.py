"""Server addresses with their credentials kept apart from anything printable.

``ServerSpec.url`` is the public identity of a server: scheme, host, port and path prefix, no userinfo, no query.
Credentials (URL userinfo -> basic auth, a bearer token, extra headers) live only in ``ServerSpec.headers`` and are
never part of a repr, a status dict or an error message.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from comfy_notebook.core.errors import ConfigError

_SCHEMES = {"http": "ws", "https": "wss"}


@dataclass(frozen=True)
class ServerSpec:
    """One ComfyUI server: where it is and how to authenticate, with secrets hidden from reprs."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def parse(cls, raw: str, *, token: str | None = None, headers: Mapping[str, str] | None = None) -> ServerSpec:
        """Parse ``http(s)://[user:pass@]host[:port][/prefix]``; userinfo becomes basic auth."""
        text = raw.strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
        except ValueError:  # e.g. "Invalid IPv6 URL", or an NFKC netloc error whose text includes the password
            raise ConfigError(f"not a ComfyUI server URL: {_redacted(raw)!r}") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES or not parts.hostname:
            raise ConfigError(f"not a ComfyUI server URL: {_redacted(raw)!r} (expected http(s)://host:port)")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"bad port in server URL {_redacted(raw)!r}") from None
        host = parts.hostname
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = host if port is None else f"{host}:{port}"
        prefix = parts.path.rstrip("/")
        all_headers: dict[str, str] = {}
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            all_headers["Authorization"] = "Basic " + base64.b64encode(user_pass.encode()).decode()
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        return cls(urlunsplit((scheme, netloc, prefix, "", "")), all_headers)

    def http_url(self, path: str) -> str:
        """The URL of an API route, keeping any path prefix (``urljoin`` would drop it)."""
        return self.url + path

    def ws_url(self, client_id: str) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{_SCHEMES[scheme]}://{rest}/ws?clientId={quote(client_id)}"

    def __str__(self) -> str:
        return self.url


def _redacted(raw: str) -> str:
    """``raw`` with any userinfo replaced, for messages about URLs we could not parse."""
    if "@" in raw and "://" in raw:
        scheme, rest = raw.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    if "@" in raw:
        return "***@" + raw.rsplit("@", 1)[1]
    return raw
