"""What a PACS node is told: where to listen, where to forward, which archive to poll, how to log in, what to touch.

Addresses are only those given: a listener binds the loopback interface unless an address is named, accepts
associations only from loopback and from the peers named with ``allow_from``, and the node connects nowhere but the
destination or the DICOMweb service it was given. Credentials never travel in clear to another machine: plain
``http://`` is accepted for a loopback service only (a local Orthanc, a test), ``https://`` for anything else.
Everything is checked here, before the model is loaded, so that a wrong option is one line and costs nothing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from meddeblur.errors import InvalidOption, NotFound

__all__ = [
    "DEFAULT_SOP_CLASSES",
    "AE",
    "Auth",
    "Filters",
    "parse_listen",
    "parse_forward",
    "check_url",
    "is_loopback",
    "resolve_peers",
]

#: SOP classes a photograph of the skin comes in, each able to carry the deblurred result in the same class.
DEFAULT_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.77.1.7",  # Dermoscopic Photography Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
)
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 characters of the DICOM default repertoire, no backslash


@dataclass(frozen=True)
class AE:
    """An application entity: title, host, port."""

    title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Auth:
    """How to log in to a DICOMweb service and check its certificate (files, so that secrets stay out of ``ps``)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and self.user is not None:
            raise InvalidOption(
                "user= and token=: a service takes one way of logging in; give a bearer token or a user, not both",
                value=self.user,
                option="user",
            )
        if self.user is not None and self.password is None:
            raise InvalidOption(f"user={self.user}: give its password too (password_file=)", value=self.user, option="user")
        for name in ("ca_bundle", "client_cert", "client_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise NotFound(f"{name}={path}: no such file; check the path", value=path)
        if self.client_key is not None and self.client_cert is None:
            raise InvalidOption(
                f"client_key={self.client_key}: a key goes with its certificate; add client_cert=",
                value=self.client_key,
                option="client_key",
            )

    @property
    def sends_secret(self) -> bool:
        return self.user is not None or self.token is not None


@dataclass(frozen=True)
class Filters:
    """Which instances the node deblurs: SOP classes, and modalities if any are named (empty: every modality)."""

    sop_classes: tuple[str, ...] = DEFAULT_SOP_CLASSES
    modalities: tuple[str, ...] = field(default_factory=tuple)

    def refusal(self, sop_class: str, modality: str) -> str | None:
        """Why an instance of this class and modality is not touched, or None if it is."""
        if sop_class not in self.sop_classes:
            return f"SOP class {sop_class} is not one this node deblurs ({', '.join(self.sop_classes)}); not touched"
        if self.modalities and modality not in self.modalities:
            return f"modality {modality or '(none)'} is not one this node deblurs ({', '.join(self.modalities)}); not touched"
        return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _title(text: str, option: str, value: str) -> str:
    if not _AET.match(text):
        raise InvalidOption(
            f"{option}={value}: the AE title {text!r} must be 1 to 16 printable characters, no backslash",
            value=value,
            option=option,
        )
    return text


def _port(text: str, option: str, value: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidOption(f"{option}={value}: the port {text!r} must be a number from 1 to 65535", value=value, option=option)
    return int(text)


def parse_listen(value: str) -> AE:
    """``AET@PORT`` (on 127.0.0.1) or ``AET@HOST:PORT`` (an address of this machine named explicitly)."""
    title, at, where = value.rpartition("@")
    if not at:
        raise InvalidOption(
            f"listen={value}: write AET@PORT, e.g. MEDDEBLUR@11112 (or AET@HOST:PORT to bind another address)",
            value=value,
            option="listen",
        )
    host, _, port = where.rpartition(":")
    return AE(_title(title, "listen", value), host or "127.0.0.1", _port(port, "listen", value))


def parse_forward(value: str) -> AE:
    """``AET@HOST:PORT``: the destination of the derived instances."""
    title, at, where = value.rpartition("@")
    host, colon, port = where.rpartition(":")
    if not at or not colon or not host:
        raise InvalidOption(f"forward={value}: write AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242", value=value, option="forward")
    return AE(_title(title, "forward", value), host, _port(port, "forward", value))


def check_url(url: str, auth: Auth) -> str:
    """The DICOMweb base URL, refused unless it is http(s) and credentials would not cross the network in clear."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidOption(
            f"dicomweb={url}: give the service's base URL, e.g. http://127.0.0.1:8042/dicom-web", value=url, option="dicomweb"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname) and auth.sends_secret:
        raise InvalidOption(
            f"dicomweb={url}: credentials would travel unencrypted to {parts.hostname}; use https:// "
            "(plain http only for a service on this machine)",
            value=url,
            option="dicomweb",
        )
    return url.rstrip("/")


def resolve_peers(hosts: list[str] | tuple[str, ...]) -> set[str]:
    """The addresses the named peers resolve to (an address resolves to itself), resolved once at start-up."""
    found: set[str] = set()
    for host in hosts:
        try:
            found |= {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except socket.gaierror:
            raise InvalidOption(
                f"allow_from={host}: this name does not resolve; give an address or a name this machine knows",
                value=host,
                option="allow_from",
            ) from None
    return found
