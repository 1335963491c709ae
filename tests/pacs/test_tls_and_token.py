"""``meddeblur pacs --dicomweb`` over TLS with a client certificate, and with a bearer token: what works, and what
fails in one line naming the fix.

Both go through a gateway on 127.0.0.1 in front of a real Orthanc: a TLS server (Python's ``ssl``, i.e. OpenSSL) that
checks client certificates against a test CA, or a server that takes only a bearer token, passing each request on to
Orthanc. Orthanc itself cannot serve either here: Debian's Orthanc 1.10.1 has no bearer tokens without an
authorization plugin, and crashes (segmentation fault) on its first HTTPS connection with ``SslEnabled``.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("dicomweb_client", reason="meddeblur pacs needs the [pacs] extra")
pytest.importorskip("pynetdicom", reason="meddeblur pacs needs the [pacs] extra")

from pacs_helpers import clean_orthanc, orthanc  # noqa: E402,F401  (fixtures)
from pacs_helpers import USER, PASSWORD, as_bytes, make_instance, pacs_command  # noqa: E402

TOKEN = "t0ken-for-tests"


def _openssl(*args: object, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate it signed (each PEM with its key)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=meddeblur test CA", "-keyout", "ca.key",
             "-out", "ca.pem", cwd=folder)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=127.0.0.1 {name}", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", cwd=folder)
        (folder / f"{name}.ext").write_text(extension + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                 "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=folder)
        (folder / f"{name}.pem").write_text((folder / f"{name}.crt").read_text() + (folder / f"{name}.key").read_text())
    return {"ca": folder / "ca.pem", "server": folder / "server.pem", "client": folder / "client.pem",
            "client_cert": folder / "client.crt", "client_key": folder / "client.key"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test certificates (apt-get install openssl)")
    return _certificates(tmp_path_factory.mktemp("tls"))


def _secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def _once(url: str, tmp_path: Path, model: Path, *login: object) -> subprocess.CompletedProcess:
    command = pacs_command("--dicomweb", url, *login, "--state", tmp_path / "state.sqlite", "--model", model, "--device", "cpu",
                           "--once")
    return subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meddeblur pacs: error: --dicomweb "), done.stderr
    return lines[0]


class _Gateway(BaseHTTPRequestHandler):
    """Passes each request on to Orthanc: with its own login if ``token`` is set and the request carries it as a bearer
    token (else 401), or with the request's own login."""

    upstream = ""
    token: str | None = None

    def _pass_on(self) -> None:
        import requests

        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type", "authorization")}
        if self.token is not None:
            if self.headers.get("Authorization") != f"Bearer {self.token}":
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            del headers["Authorization"]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = requests.request(self.command, self.upstream + self.path, data=body, headers=headers, timeout=60,
                                  auth=(USER, PASSWORD) if self.token is not None else None)
        self.send_response(answer.status_code)
        if "Content-Type" in answer.headers:
            self.send_header("Content-Type", answer.headers["Content-Type"])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = _pass_on

    def log_message(self, *args: object) -> None:  # quiet
        pass


@contextlib.contextmanager
def _gateway(upstream: str, token: str | None = None, tls: dict[str, Path] | None = None) -> Iterator[str]:
    """The gateway's DICOMweb root; over TLS (a server certificate for 127.0.0.1, client certificates required) with ``tls``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Gateway", (_Gateway,), {"upstream": upstream, "token": token}))
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls["server"])
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls["ca"])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *args: None  # a refused handshake is the test's point, not an error to print
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def test_a_bearer_token_logs_in_and_a_wrong_one_is_one_line(clean_orthanc, tiny_weights, tmp_path) -> None:
    clean_orthanc.upload(as_bytes(make_instance("token", seed=4)))
    with _gateway(clean_orthanc.root, token=TOKEN) as url:
        wrong = _one_line_error(_once(url, tmp_path, tiny_weights, "--token-file", _secret(tmp_path, "wrong", "not-it")))
        assert "refused the login (HTTP 401)" in wrong and "--token-file" in wrong, wrong
        assert clean_orthanc.count() == 1
        done = _once(url, tmp_path, tiny_weights, "--token-file", _secret(tmp_path, "token", TOKEN))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 derived instance(s) stored" in done.stdout, done.stdout
    assert clean_orthanc.count() == 2


def test_tls_with_the_services_ca_and_a_client_certificate_derives(clean_orthanc, certificates, tiny_weights, tmp_path) -> None:
    clean_orthanc.upload(as_bytes(make_instance("tls", seed=3)))
    password = _secret(tmp_path, "password", PASSWORD)
    with _gateway(clean_orthanc.root, tls=certificates) as url:
        done = _once(url, tmp_path, tiny_weights, "--user", USER, "--password-file", password, "--ca-bundle", certificates["ca"],
                     "--client-cert", certificates["client_cert"], "--client-key", certificates["client_key"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 derived instance(s) stored" in done.stdout, done.stdout
    assert clean_orthanc.count() == 2


@pytest.mark.parametrize("case", ["no CA", "no client certificate"])
def test_tls_failures_are_one_line_naming_the_fix(orthanc, certificates, tiny_weights, tmp_path, case) -> None:
    login = ["--user", USER, "--password-file", _secret(tmp_path, "password", PASSWORD)]
    if case == "no CA":  # the system's CAs do not know the test CA
        login += ["--client-cert", certificates["client"]]
    else:
        login += ["--ca-bundle", certificates["ca"]]
    with _gateway(orthanc.root, tls=certificates) as url:
        line = _one_line_error(_once(url, tmp_path, tiny_weights, *login))
    fix, not_the_fix = ("--ca-bundle", "--client-cert") if case == "no CA" else ("--client-cert", "--ca-bundle")
    assert fix in line and not_the_fix not in line, line
