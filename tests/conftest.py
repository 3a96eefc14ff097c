"""Shared pytest fixtures.

Broker fixtures start a real mosquitto process on 127.0.0.1 with a free port, its config, log
and persistence database in the test's tmp_path. They skip the test when mosquitto is not
installed (Debian: ``apt-get install mosquitto mosquitto-clients``).

Tests skip when a system part they need is missing. With ``KWSTREAM_STRICT_TESTS=1`` (set by
``.ci/run``) a skip fails instead, so a machine that lacks a package cannot pass by skipping.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

BROKER_START_TIMEOUT_S = 5.0
BROKER_STOP_TIMEOUT_S = 5.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Turn a skip into a failure when KWSTREAM_STRICT_TESTS=1."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("KWSTREAM_STRICT_TESTS") == "1":
        reason = call.excinfo.value if call.excinfo is not None else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under KWSTREAM_STRICT_TESTS=1: {reason}"


def _find_program(name: str) -> str | None:
    """Find a program on PATH or in /usr/sbin, where Debian installs mosquitto."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class MosquittoBroker:
    """A mosquitto process listening on ``host``:``port``; restart() keeps the same port.

    Persistence is on, so retained messages and persistent sessions (clean_session False)
    survive stop() and start(), as they survive a restart of a production broker.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path,
        *,
        password_file: Path | None = None,
        tls_files: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """Write the config into ``directory``; ``tls_files`` is (CA, certificate, key)."""
        program = _find_program("mosquitto")
        if program is None:
            pytest.skip("mosquitto is not installed, so no MQTT broker can be started")
        self.program = program
        self.directory = directory
        self.port = _free_port(self.host)
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        persistence_dir = directory / "persistence"
        persistence_dir.mkdir()

        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if password_file else 'true'}",
            "persistence true",
            # mosquitto requires the trailing slash on a directory.
            f"persistence_location {persistence_dir}/",
            f"log_dest file {self.log_file}",
            "log_type all",
            # When started as root, mosquitto switches to this user; the current user keeps
            # access to the temporary directory.
            f"user {getpass.getuser()}",
        ]
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if tls_files is not None:
            ca_file, cert_file, key_file = tls_files
            lines += [f"cafile {ca_file}", f"certfile {cert_file}", f"keyfile {key_file}"]
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self) -> None:
        """Start mosquitto and return once its port accepts TCP connections."""
        if self._process is not None:
            raise RuntimeError("mosquitto is already running")
        self._process = subprocess.Popen(
            [self.program, "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                returncode = self._process.returncode
                self._process = None
                raise RuntimeError(
                    f"mosquitto exited with status {returncode} at start; "
                    f"log:\n{self.read_log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mosquitto did not accept connections on {self.host}:{self.port} "
                        f"within {BROKER_START_TIMEOUT_S} s; log:\n{self.read_log()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop mosquitto with SIGTERM, which saves its persistence database."""
        process = self._process
        if process is None:
            return
        self._process = None
        process.terminate()
        # A paused broker handles SIGTERM only once it continues.
        process.send_signal(signal.SIGCONT)
        try:
            process.wait(BROKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Freeze mosquitto with SIGSTOP: connections stay open but it sends nothing."""
        if self._process is None:
            raise RuntimeError("mosquitto is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Continue a paused mosquitto with SIGCONT."""
        if self._process is None:
            raise RuntimeError("mosquitto is not running")
        self._process.send_signal(signal.SIGCONT)

    def restart(self, downtime_s: float = 0.0) -> None:
        """Stop mosquitto, wait ``downtime_s`` and start it again on the same port."""
        self.stop()
        time.sleep(downtime_s)
        self.start()

    def read_log(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log file)"


class PasswordBroker(MosquittoBroker):
    """A mosquitto that rejects anonymous clients and accepts ``username``/``password``."""

    username = "kwstream-test"
    password = "s3cret-Pa55word"

    def __init__(self, directory: Path) -> None:
        program = _find_program("mosquitto_passwd")
        if program is None:
            pytest.skip("mosquitto_passwd is not installed, so no password file can be made")
        password_file = directory / "passwords"
        subprocess.run(
            [program, "-b", "-c", str(password_file), self.username, self.password],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.chmod(password_file, 0o600)
        super().__init__(directory, password_file=password_file)


class TlsBroker(MosquittoBroker):
    """A mosquitto with TLS only, with a test CA and a certificate for 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        program = _find_program("openssl")
        if program is None:
            pytest.skip("openssl is not installed, so no test certificate can be made")
        self.ca_file = directory / "ca.pem"
        cert_file = directory / "server.pem"
        key_file = directory / "server.key"
        ca_key = directory / "ca.key"
        request = directory / "server.csr"
        for command in (
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", ca_key, "-out", self.ca_file, "-days", "2", "-subj", "/CN=kwstream test CA"],
            ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key_file, "-out", request, "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", request, "-CA", self.ca_file, "-CAkey", ca_key,
             "-CAcreateserial", "-out", cert_file, "-days", "2",
             "-extfile", _write_san_extension(directory)],
        ):
            subprocess.run(
                [program, *map(str, command)], check=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        super().__init__(directory, tls_files=(self.ca_file, cert_file, key_file))


def _write_san_extension(directory: Path) -> Path:
    # Python's ssl module checks the IP address against subjectAltName, never against the CN.
    path = directory / "san.ext"
    path.write_text("subjectAltName = IP:127.0.0.1\n", encoding="utf-8")
    return path


BrokerT = TypeVar("BrokerT", bound=MosquittoBroker)


def _run_broker(broker: BrokerT) -> Iterator[BrokerT]:
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running mosquitto on 127.0.0.1 that accepts anonymous clients."""
    yield from _run_broker(MosquittoBroker(tmp_path))


@pytest.fixture
def mosquitto_with_password(tmp_path: Path) -> Iterator[PasswordBroker]:
    """A running mosquitto that requires PasswordBroker.username and .password."""
    yield from _run_broker(PasswordBroker(tmp_path))


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[TlsBroker]:
    """A running mosquitto with TLS; its ``ca_file`` signed the certificate for 127.0.0.1."""
    yield from _run_broker(TlsBroker(tmp_path))
