"""The DICOMweb way in: QIDO-RS lists the archive's instances, WADO-RS fetches the new ones, STOW-RS stores results.

All protocol work is dicomweb-client's; this module decides what to ask. Each poll lists the instances of the
configured modalities (or all, without ``--modality``; the archive filters, page by page) with their SOP class, and
hands the ones the node has not seen to it. "New since the last poll" is decided by the node's records, not by a
date: an instance that reaches the archive late, or with an old study date, is never missed, and the listing costs
one small query per page. The same client asks whether a derived instance is already there (QIDO on its computed
UID) and stores it (STOW-RS, which answers per instance).

Failures of the service are one line: a refused login (401/403), an unreachable host, a certificate that does not
check. The first poll raises them (the command exits 2); later ones are logged and retried at the next poll, so a
restarted archive does not stop the node.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from meddeblur.errors import UserError
from meddeblur.pacs.config import Auth, Filters
from meddeblur.pacs.node import Counts, Node

__all__ = ["ServiceError", "Archive", "poll", "run_dicomweb"]

log = logging.getLogger("meddeblur.pacs")

PAGE = 500  # instances per QIDO page: Orthanc's and dcm4chee's defaults allow it
_UIDS = {"study": "0020000D", "series": "0020000E", "instance": "00080018", "class": "00080016", "modality": "00080060"}


class ServiceError(UserError):
    """The DICOMweb service refused or could not be reached; the message names it and what to check.

    ``instance``: True when the service refused one request about one instance (an HTTP error other than 401/403),
    which must not stop the others; False for a login, certificate or connection failure, which stops the poll.
    """

    def __init__(self, message: str, value: object = None, instance: bool = False) -> None:
        super().__init__(message, value)
        self.instance = instance


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _session(auth: Auth) -> Any:
    """A requests session logging in and checking TLS as ``auth`` says.

    A ``ca_bundle`` given here wins over ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``: requests lets those variables
    replace a session's own ``verify`` (psf/requests#3829), which would silently drop ``--ca-bundle`` on the many
    machines that set them for the system's CAs.
    """
    import requests

    class Session(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            settings = super().merge_environment_settings(*args, **kwargs)
            if auth.ca_bundle is not None:
                settings["verify"] = auth.ca_bundle
            return settings

    session = Session()
    if auth.user is not None:
        session.auth = (auth.user, auth.password or "")
    if auth.token is not None:
        session.headers["Authorization"] = f"Bearer {auth.token}"
    if auth.ca_bundle is not None:
        session.verify = auth.ca_bundle
    if auth.client_cert is not None:
        session.cert = (auth.client_cert, auth.client_key) if auth.client_key else auth.client_cert
    return session


_CLIENT_CERTIFICATE_WANTED = "certificate required"  # OpenSSL's alert when the server wants a client certificate


def _tls_failure(error: Exception) -> str:
    """What went wrong in a TLS handshake, and the fix: the service's certificate did not check, or else the service
    broke the handshake off (with TLS 1.3 its refusal of this client's certificate can arrive as a bare end of stream)."""
    if "certificate verify failed" in str(error).lower():
        return "the service's TLS certificate did not check; give the CA that signed it with ca_bundle="
    return (
        "the service broke the TLS handshake off: it wants a client certificate it trusts; give one with client_cert= "
        "(and client_key= unless the file holds the key)"
    )


class Archive:
    """A DICOMweb service, through dicomweb-client, with every failure turned into one :class:`ServiceError` line."""

    def __init__(self, url: str, auth: Auth, timeout: float = 60.0) -> None:
        from dicomweb_client import DICOMwebClient

        self.url = url
        self.client = DICOMwebClient(url, session=_session(auth), timeout=timeout)
        self.client.set_http_retry_params(retry=False)  # the poll loop is the retry; a 401 must not wait for back-off

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return function(*args, **kwargs)
        except requests.exceptions.SSLError as error:
            raise ServiceError(f"dicomweb={self.url}: while {what}, {_tls_failure(error)}", value=self.url) from None
        except requests.exceptions.HTTPError as error:
            status = getattr(error.response, "status_code", None)
            if status in (401, 403):
                raise ServiceError(
                    f"dicomweb={self.url}: the service refused the login (HTTP {status}) while {what}; check "
                    "user= and password_file=, or token_file=",
                    value=self.url,
                ) from None
            raise ServiceError(
                f"dicomweb={self.url}: HTTP {status} while {what}; check the URL (the DICOMweb root, e.g. "
                "http://HOST:8042/dicom-web) and the service's log",
                value=self.url,
                instance=True,
            ) from None
        except requests.exceptions.RequestException as error:
            if _CLIENT_CERTIFICATE_WANTED in str(error).lower():  # a refused handshake can come back as a reset connection
                raise ServiceError(f"dicomweb={self.url}: while {what}, {_tls_failure(error)}", value=self.url) from None
            raise ServiceError(
                f"dicomweb={self.url}: cannot reach the service while {what} ({type(error).__name__}); check that "
                "it runs and the address",
                value=self.url,
            ) from None

    def listing(self, filters: Filters) -> Iterator[dict[str, str]]:
        """Every instance of the configured modalities (all without any), page by page: UIDs, SOP class, modality."""
        for modality in filters.modalities or (None,):
            offset = 0
            while True:
                page = self._call(
                    "listing instances (QIDO-RS)",
                    self.client.search_for_instances,
                    search_filters={"Modality": modality} if modality else None,
                    fields=["SOPClassUID", "Modality"],
                    limit=PAGE,
                    offset=offset,
                )
                for item in page:
                    yield {name: _value(item, tag) for name, tag in _UIDS.items()}
                if len(page) < PAGE:
                    break
                offset += len(page)

    def fetch(self, study: str, series: str, instance: str) -> Any:
        """The instance as stored (any transfer syntax: decoding it, or refusing, is the node's, as for files)."""
        return self._call(
            f"retrieving {instance} (WADO-RS)",
            self.client.retrieve_instance,
            study,
            series,
            instance,
            media_types=(("application/dicom", "*"),),
        )

    def exists(self, study: str, series: str, instance: str) -> bool:
        found = self._call(
            f"looking for {instance} (QIDO-RS)",
            self.client.search_for_instances,
            study_instance_uid=study,
            search_filters={"SOPInstanceUID": instance},
            fields=["SOPInstanceUID"],
        )
        return any(_value(item, _UIDS["instance"]) == instance for item in found)

    def store(self, dataset: Any) -> None:
        answer = self._call(f"storing {dataset.SOPInstanceUID} (STOW-RS)", self.client.store_instances, [dataset])
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "?")
            raise ServiceError(
                f"dicomweb={self.url}: the service refused to store {dataset.SOPInstanceUID} (failure reason "
                f"{reason}); check its log and storage",
                value=self.url,
                instance=True,
            )


def poll(archive: Archive, node: Node, filters: Filters, stop: threading.Event | None = None) -> Counts:
    """One pass: every listed instance the node has not seen is fetched and handled; the node's counts back.

    ``stop`` set (SIGTERM) ends the pass after the instance at hand: the rest is new at the next start.
    """
    for item in archive.listing(filters):
        if stop is not None and stop.is_set():
            break
        uid = item["instance"]
        if not uid or node.is_ours(uid):  # a derived instance this node stored: never a source
            continue
        if node.seen(uid):
            node.counts.known += 1
            continue
        why = filters.refusal(item["class"], item["modality"])
        if why is not None:  # recorded from the listing alone: nothing to fetch
            node.skip(uid, f"{uid}: {why}")
            continue
        try:
            node.handle(archive.fetch(item["study"], item["series"], uid))
        except ServiceError as error:
            if not error.instance:
                raise
            node.failed(uid, str(error))  # this instance only: the others go on
    return node.counts


def run_dicomweb(
    archive: Archive, node: Node, filters: Filters, interval: float, once: bool, stop: threading.Event | None = None
) -> Counts:
    """Poll every ``interval`` seconds until ``stop`` is set (``once``: a single pass, for cron)."""
    stop = stop or threading.Event()
    first = True
    while True:
        try:
            poll(archive, node, filters, stop)
        except ServiceError as error:
            if first or once:
                raise
            log.warning("%s; trying again in %g s", " ".join(str(error).split()), interval)
        first = False
        if once or stop.wait(interval):
            return node.counts
