"""Endpoints, credentials and channels (sync and grpc.aio).

- `unix:///path`: plaintext on a local socket. grpc-core would send the socket
  path as the HTTP/2 :authority, which volmig's server (Rust, h2) refuses, so
  the channel's default authority is set to "localhost".
- `https://host:port` (or `host:port`): TLS; with `cert`/`key`, mutual TLS.
- `http://host:port`: plaintext TCP (a token is sent only to a loopback host).

A bearer token goes in the `authorization` metadata of every call; a
`token_file` is re-read on each call, so a rotated token is picked up.
The token is never part of a repr, message or log line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import grpc
import grpc.aio

PathLike = Union[str, Path]
Metadata = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Endpoint:
    """One parsed endpoint: `target` is what grpc dials."""

    url: str
    target: str
    tls: bool
    unix: bool
    host: str

    @property
    def loopback(self) -> bool:
        if self.unix or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


def parse_endpoint(url: str) -> Endpoint:
    """`unix:///run/volmig/node.sock`, `https://host:7450`, `http://127.0.0.1:7450`, `host:7450`."""
    if url.startswith("unix:"):
        path = url[len("unix:"):].lstrip("/")
        if not path:
            raise ValueError(f"no socket path in {url!r}")
        return Endpoint(url, "unix:///" + path, tls=False, unix=True, host="localhost")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"not an endpoint: {url!r} (use unix:///PATH or https://HOST:PORT)")
    host = parts.hostname
    target = f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
    return Endpoint(url, target, tls=parts.scheme == "https", unix=False, host=host)


def _read(path: Optional[PathLike]) -> Optional[bytes]:
    return Path(path).read_bytes() if path is not None else None


@dataclass(frozen=True)
class Credentials:
    """TLS files (read once) and a bearer token (or a file re-read per call)."""

    ca: Optional[bytes] = field(default=None, repr=False)
    cert: Optional[bytes] = field(default=None, repr=False)
    key: Optional[bytes] = field(default=None, repr=False)
    token: Optional[str] = field(default=None, repr=False)
    token_file: Optional[Path] = None

    @classmethod
    def load(
        cls,
        ca: Optional[PathLike],
        cert: Optional[PathLike],
        key: Optional[PathLike],
        token: Optional[str],
        token_file: Optional[PathLike],
    ) -> "Credentials":
        if (cert is None) != (key is None):
            raise ValueError("give both cert= and key= (mutual TLS) or neither")
        if token is not None and token_file is not None:
            raise ValueError("give token= or token_file=, not both")
        return cls(
            ca=_read(ca),
            cert=_read(cert),
            key=_read(key),
            token=token,
            token_file=Path(token_file) if token_file is not None else None,
        )

    @property
    def has_token(self) -> bool:
        return self.token is not None or self.token_file is not None

    def metadata(self) -> Metadata:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
            if not token:
                raise ValueError(f"token file {self.token_file} is empty")
        return (("authorization", f"Bearer {token}"),) if token else ()


def _check(endpoint: Endpoint, creds: Credentials) -> None:
    if creds.has_token and not (endpoint.tls or endpoint.loopback):
        raise ValueError(
            f"refusing to send the bearer token in plaintext to {endpoint.url}; use https://"
        )


def _options(endpoint: Endpoint) -> List[Tuple[str, str]]:
    return [("grpc.default_authority", "localhost")] if endpoint.unix else []


def _ssl(creds: Credentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert
    )


def open_channel(endpoint: Endpoint, creds: Credentials) -> grpc.Channel:
    _check(endpoint, creds)
    if endpoint.tls:
        return grpc.secure_channel(endpoint.target, _ssl(creds), options=_options(endpoint))
    return grpc.insecure_channel(endpoint.target, options=_options(endpoint))


def open_aio_channel(endpoint: Endpoint, creds: Credentials) -> grpc.aio.Channel:
    _check(endpoint, creds)
    if endpoint.tls:
        return grpc.aio.secure_channel(endpoint.target, _ssl(creds), options=_options(endpoint))
    return grpc.aio.insecure_channel(endpoint.target, options=_options(endpoint))


def endpoints_of(endpoint: Union[str, Sequence[str]]) -> List[Endpoint]:
    urls = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    if not urls:
        raise ValueError("no endpoint given")
    return [parse_endpoint(u) for u in urls]
