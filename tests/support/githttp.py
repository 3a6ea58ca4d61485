"""A git server over HTTPS on loopback: `git http-backend` (git's own smart-HTTP server, run as
CGI per request) behind a TLS listener with a certificate made for the test.

    with git_https_server(repos_dir) as server:
        server.url          # https://127.0.0.1:PORT — clone server.url + "/app.git"
        server.ca_file      # the certificate to trust (e.g. NODE_EXTRA_CA_CERTS)

bolt.diy clones through its own proxy route, which always speaks https; this gives it a real
remote without leaving the machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class GitServer:
    url: str
    ca_file: Path


def bare_repository(repos_dir: Path, name: str, files: dict[str, str]) -> Path:
    """A bare repository `name` under `repos_dir` whose `main` holds `files`, one commit."""
    work = repos_dir / f".{name}-work"
    bare = repos_dir / name
    env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}  # fmt: skip
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    for argv in (
        ["git", "init", "-q", "-b", "main", str(work)],
        ["git", "-C", str(work), "add", "-A"],
        ["git", "-C", str(work), "commit", "-q", "-m", "the app"],
        ["git", "clone", "-q", "--bare", str(work), str(bare)],
    ):
        subprocess.run(argv, check=True, env=env, timeout=60)
    return bare


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in `folder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "git-cert.pem", folder / "git-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class _Handler(BaseHTTPRequestHandler):
    """One request → one `git http-backend` run (CGI: the request in env and stdin, the
    response's headers and body on stdout)."""

    repos_dir: Path
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._backend(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if not 0 <= length <= MAX_BODY:
            self.send_error(413)
            return
        self._backend(self.rfile.read(length))

    def _backend(self, body: bytes) -> None:
        url = urlsplit(self.path)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.repos_dir),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": self.headers.get("git-protocol", ""),
            "REMOTE_ADDR": self.client_address[0],
        }
        if self.headers.get("content-encoding") == "gzip":
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                              timeout=120, check=False)  # fmt: skip
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            field, _, value = line.partition(":")
            if field.lower() == "status":
                status = int(value.split()[0])
            elif field:
                headers.append((field, value.strip()))
        self.send_response(status)
        for field, value in headers:
            self.send_header(field, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def git_https_server(repos_dir: Path) -> Iterator[GitServer]:
    cert_file, key_file = _certificate(repos_dir)
    handler = type("Handler", (_Handler,), {"repos_dir": repos_dir})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield GitServer(f"https://127.0.0.1:{server.server_port}", cert_file)
    finally:
        server.shutdown()
        server.server_close()
