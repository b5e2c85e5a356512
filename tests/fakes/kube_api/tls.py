"""Certificates for HTTPS: a CA and a server certificate for 127.0.0.1, made by openssl once per process."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

_TLS_FILES: dict[str, Path] = {}


def tls_files() -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (made once per process, by openssl)."""
    if not _TLS_FILES:
        d = Path(tempfile.mkdtemp(prefix="fake-kube-tls-"))
        ext = d / "ext.cnf"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                       "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3", "-subj", "/CN=fake-kube-ca")
        run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "3", "-extfile", "ext.cnf")
        run("req", "-x509", *ec, "-keyout", "other-ca.key", "-out", "other-ca.crt", "-days", "3",
            "-subj", "/CN=some-other-ca")
        _TLS_FILES.update(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key", other_ca=d / "other-ca.crt")
    return _TLS_FILES
