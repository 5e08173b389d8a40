"""Test-suite guard: nothing in the tests may reach anything but loopback."""

from __future__ import annotations

import ipaddress
import socket

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo
_real_gethostbyname = socket.gethostbyname
_real_gethostbyname_ex = socket.gethostbyname_ex
_real_gethostbyaddr = socket.gethostbyaddr
_real_sendto = socket.socket.sendto
_real_sendmsg = socket.socket.sendmsg


def _is_loopback(address: object) -> bool:
    if isinstance(address, str):  # AF_UNIX path
        return True
    if isinstance(address, bytes):
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: object) -> object:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise OSError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect(self, address)  # type: ignore[arg-type]


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise OSError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    # Name lookups may leave the machine too: only loopback names and literal addresses.
    if host is not None and not _is_loopback((host.decode() if isinstance(host, bytes)
                                              else host, 0)):
        try:
            ipaddress.ip_address(host if isinstance(host, str) else host.decode())  # type: ignore[union-attr]
        except ValueError:
            raise OSError(f"tests may not resolve {host!r}") from None
    return _real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]


def _name_guard(real):  # type: ignore[no-untyped-def]
    def guarded(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        _check_name(host)
        return real(host, *args, **kwargs)

    return guarded


def _check_name(host: object) -> None:
    name = host.decode() if isinstance(host, bytes) else host
    if not _is_loopback((name, 0)):
        try:
            ipaddress.ip_address(name)  # type: ignore[arg-type]
        except ValueError:
            raise OSError(f"tests may not resolve {host!r}") from None
        raise OSError(f"tests may only reach loopback, not {host!r}")


def _guarded_sendto(self: socket.socket, data: bytes, *args: object) -> int:
    address = args[-1]
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise OSError(f"tests may only send to loopback, not {address!r}")
    return _real_sendto(self, data, *args)  # type: ignore[arg-type]


def _guarded_sendmsg(self: socket.socket, buffers: object, *args: object) -> int:
    address = args[2] if len(args) >= 3 else None
    if (address is not None and self.family in (socket.AF_INET, socket.AF_INET6)
            and not _is_loopback(address)):
        raise OSError(f"tests may only send to loopback, not {address!r}")
    return _real_sendmsg(self, buffers, *args)  # type: ignore[arg-type]


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> object:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]
    socket.gethostbyname = _name_guard(_real_gethostbyname)
    socket.gethostbyname_ex = _name_guard(_real_gethostbyname_ex)
    socket.gethostbyaddr = _name_guard(_real_gethostbyaddr)
    socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign,assignment]
    socket.socket.sendmsg = _guarded_sendmsg  # type: ignore[method-assign,assignment]
    yield
    socket.getaddrinfo = _real_getaddrinfo
    socket.gethostbyname = _real_gethostbyname
    socket.gethostbyname_ex = _real_gethostbyname_ex
    socket.gethostbyaddr = _real_gethostbyaddr
    socket.socket.sendto = _real_sendto  # type: ignore[method-assign]
    socket.socket.sendmsg = _real_sendmsg  # type: ignore[method-assign]
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]
