"""Proxies: how tgmux reaches Telegram and the providers through one.

A proxy is written as one URL, ``scheme://[user:password@]host:port`` (a user or password
holding ``@ : / %`` percent-encoded, e.g. ``p%40ss`` for ``p@ss``):

* ``telegram.proxy``: ``socks5``, ``socks4`` or ``http`` (``CONNECT``), for the MTProto
  connections; kurigram dials it (with python-socks): see
  :func:`tgmux.telegram.client.telegram_proxy`.
* a backend's ``proxy``: ``http`` or ``https`` (TLS to the proxy), for every request of the
  one HTTP layer (:mod:`tgmux.http`, aiohttp's pool) and for a backend's websocket. Without
  it, ``trust_env`` (default on) takes the proxy from ``HTTPS_PROXY`` / ``HTTP_PROXY`` (by
  the scheme of the backend's ``base_url``) unless ``NO_PROXY`` names its host. The decision
  is made once per HTTP client, for its ``base_url`` (:func:`backend_route`), and logged.

A proxy's password is never shown: messages and logs say ``scheme://user:***@host:port``.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import yarl
from websockets.exceptions import InvalidProxyStatus, ProxyError

__all__ = [
    "BACKEND_SCHEMES",
    "TELEGRAM_SCHEMES",
    "ProxyRoute",
    "ProxyURL",
    "backend_route",
    "check_proxy",
    "parse_proxy",
    "proxy_note",
    "websocket_failure",
    "websocket_proxy",
]

log = logging.getLogger("tgmux.proxy")

TELEGRAM_SCHEMES = ("socks5", "socks4", "http")
BACKEND_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ProxyURL:
    """A proxy, parsed: user and password decoded."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def shown(self) -> str:
        """The URL as messages and logs show it (no password)."""
        user = f"{quote(self.username, safe='')}:***@" if self.username is not None else ""
        return f"{self.scheme}://{user}{self.address}"

    @property
    def url(self) -> str:
        """The URL with its credentials (for the libraries that dial it)."""
        user = ""
        if self.username is not None:
            user = quote(self.username, safe="")
            if self.password is not None:
                user += ":" + quote(self.password, safe="")
            user += "@"
        return f"{self.scheme}://{user}{self.address}"


def parse_proxy(value: str, schemes: tuple[str, ...]) -> ProxyURL:
    """``value`` as a :class:`ProxyURL`; ValueError says what was expected (never echoing
    the value: it may hold a password)."""
    expected = (f"expected a proxy URL {'|'.join(schemes)}://[USER:PASSWORD@]HOST:PORT "
                "(percent-encode @ : / % in USER and PASSWORD)")
    if not isinstance(value, str) or "://" not in value:
        raise ValueError(expected)
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"{expected}: {scheme or 'no'} scheme is not one of these")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{expected}: the port is not a number from 1 to 65535") from None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"{expected}: {'HOST' if not parts.hostname else 'PORT'} is missing")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{expected}: nothing may follow HOST:PORT")
    return ProxyURL(
        scheme, parts.hostname, port,
        unquote(parts.username) if parts.username is not None else None,
        unquote(parts.password) if parts.password is not None else None)


def check_proxy(schemes: tuple[str, ...]) -> Any:
    """A pydantic ``field_validator`` body: the value kept as written when it parses."""
    def check(value: str | None) -> str | None:
        if value is not None:
            parse_proxy(value, schemes)
        return value
    return check


# -- backends (aiohttp, websockets) ---------------------------------------------------------------


@dataclass(frozen=True)
class ProxyRoute:
    """The proxy one HTTP client uses, and where it came from (``proxy`` or a variable)."""

    proxy: ProxyURL
    source: str = "proxy"

    def __str__(self) -> str:
        return (self.proxy.shown if self.source == "proxy"
                else f"{self.proxy.shown} (from {self.source})")

    def session_options(self) -> dict[str, Any]:
        """aiohttp ``ClientSession`` options: every request of the session goes through the
        proxy (aiohttp sends the URL's credentials as ``Proxy-Authorization``)."""
        return {"proxy": yarl.URL(self.proxy.url)}

    def failure(self, exc: BaseException) -> str | None:
        """What went wrong with the proxy, when ``exc`` (an httpx error caused by an aiohttp
        one, or that one) is the proxy's failure and not the provider's: the proxy could not
        be reached, or refused the tunnel. None otherwise."""
        cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
        if isinstance(cause, aiohttp.ClientHttpProxyError):
            return f"the proxy {self} refused: HTTP {cause.status} {cause.message}".rstrip()
        if isinstance(cause, aiohttp.ClientConnectorError) and (cause.host, cause.port) == (
                self.proxy.host, self.proxy.port):  # (a TLS error with the provider: not ours)
            return f"cannot connect to the proxy {self} ({_reason(cause.os_error)})"
        if isinstance(cause, aiohttp.ConnectionTimeoutError):
            return f"cannot connect through the proxy {self} (timed out)"
        return None


def _environment_route(base_url: str) -> ProxyRoute | None:
    """The proxy the environment names for ``base_url`` (HTTPS_PROXY / HTTP_PROXY, not when
    NO_PROXY names its host), as curl and Python's urllib read them."""
    target = urlsplit(base_url)
    scheme = (target.scheme or "http").lower().replace("ws", "http")
    proxies = urllib.request.getproxies_environment()
    value = proxies.get(scheme)
    if not value or not target.hostname:
        return None
    if urllib.request.proxy_bypass_environment(target.hostname, proxies):
        return None
    source = f"{scheme.upper()}_PROXY"
    if "://" not in value:  # "proxy:3128", as curl reads it
        value = f"http://{value}"
    try:
        return ProxyRoute(parse_proxy(value, BACKEND_SCHEMES), source)
    except ValueError as exc:
        log.warning("%s is not used: %s", source, exc)
        return None


def backend_route(proxy: str | None, trust_env: bool, base_url: str) -> ProxyRoute | None:
    """The proxy for a backend's HTTP client: its ``proxy``; else, with ``trust_env``, the
    environment's for ``base_url``; else None (direct)."""
    if proxy is not None:
        return ProxyRoute(parse_proxy(proxy, BACKEND_SCHEMES))
    return _environment_route(base_url) if trust_env else None


def proxy_note(settings: Any) -> str:
    """``tgmux check``'s note on the proxy of ``telegram`` or a backend's settings (the
    environment's included), empty when there is none."""
    if getattr(settings, "type", None) is None:  # telegram:
        value = getattr(settings, "proxy", None)
        return f", through the proxy {parse_proxy(value, TELEGRAM_SCHEMES).shown}" if value \
            else ""
    route = settings.proxy_route(settings.base_url) if hasattr(settings, "proxy_route") else None
    return f" through the proxy {route}" if route is not None else ""


def websocket_proxy(route: ProxyRoute | None) -> str | None:
    """``websockets.connect``'s ``proxy``: the route of the backend's HTTP client (None:
    direct; websockets would read the environment itself otherwise, whatever ``trust_env``
    says)."""
    return route.proxy.url if route is not None else None


def websocket_failure(route: ProxyRoute | None, exc: BaseException) -> str | None:
    """What went wrong with the proxy when ``websockets.connect`` failed with ``exc``
    through ``route`` (it connects only to the proxy, which answers the ``CONNECT``)."""
    if route is None:
        return None
    if isinstance(exc, InvalidProxyStatus):
        status = exc.response.status_code
        return f"the proxy {route} refused: HTTP {status} {exc.response.reason_phrase}"
    if isinstance(exc, ProxyError):
        return f"the proxy {route} failed: {exc}"
    if isinstance(exc, TimeoutError):
        return f"cannot connect through the proxy {route} (timed out)"
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):  # (SSL: the provider's)
        return f"cannot connect to the proxy {route} ({_reason(exc)})"
    return None


def _reason(error: OSError) -> str:
    """An OS error in a few words: ``connection refused``, ``name or service not known``..."""
    if isinstance(error, ssl.SSLError | socket.gaierror) or not error.errno or error.errno < 0:
        return error.strerror or str(error) or type(error).__name__
    return os.strerror(error.errno).lower()  # asyncio's own text names only the address
