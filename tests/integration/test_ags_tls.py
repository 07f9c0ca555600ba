"""An https:// target: TLS to the backend, the certificate verified against the trusted CAs."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
from pathlib import Path

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tandem.ags.compiled_config import validate_document
from tandem.ags.gateway import Gateway
from tandem.ags.settings import GatewaySettings
from tandem.net.sockets import listen_socket
from tests.support.ags import make_document, project, send_and_read
from tests.support.echo import EchoProtocol, EchoServer


def _ca_and_cert(folder: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tandem test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_https_target_is_verified(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ca, cert, key = _ca_and_cert(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the gateway's default context trusts this CA

    async def main() -> None:
        echo = EchoServer("tls")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        server = await asyncio.get_running_loop().create_server(lambda: EchoProtocol(echo), "127.0.0.1", 0, ssl=tls)
        port = server.sockets[0].getsockname()[1]
        gw = Gateway(GatewaySettings())
        gw.apply(validate_document(make_document([
            project("good", "/good", f"https://localhost:{port}/v1"),
            project("wrongname", "/wrongname", f"https://127.0.0.1:{port}/v1"),  # cert is for localhost only
        ]), "default"))
        sock = listen_socket("127.0.0.1", 0)
        await gw.listen(sock)
        gport = sock.getsockname()[1]
        try:
            status, _, body = (await send_and_read(gport, b"GET /good/x HTTP/1.1\r\nHost: a\r\n\r\n"))[0]
            assert status == 200 and json.loads(body)["path"] == "/v1/x"
            status, _, body = (await send_and_read(gport, b"GET /wrongname/x HTTP/1.1\r\nHost: a\r\n\r\n"))[0]
            assert (status, json.loads(body)["code"]) == (502, "upstream_unavailable")
        finally:
            await gw.drain(1)
            server.close()

    assert os.environ["SSL_CERT_FILE"] == str(ca)
    uvloop.run(main())
