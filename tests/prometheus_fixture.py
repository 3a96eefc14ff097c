"""A real Prometheus server on loopback for tests, and helpers to query it.

The fixture ``prometheus_server`` gives a stopped :class:`PrometheusServer` whose storage and
configuration live in the test's tmp_path; the test calls ``start()`` with its scrape targets
once their ports are known, and the fixture stops the server afterwards. It skips the test when
the prometheus binary is missing (Debian: ``apt-get install prometheus``, which
scripts/bootstrap.sh does).

Import it explicitly in a test module: ``from tests.prometheus_fixture import
prometheus_server``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

PROMETHEUS_START_TIMEOUT_S = 30.0
PROMETHEUS_STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class PrometheusError(RuntimeError):
    """The Prometheus server failed to start, or its HTTP API returned an error."""


class PrometheusServer:
    """A prometheus process on 127.0.0.1 with a generated configuration.

    The configuration is written as JSON, which Prometheus reads as YAML, so the tests need no
    YAML library for it.
    """

    host = "127.0.0.1"

    def __init__(self, directory: Path, program: str) -> None:
        self.directory = directory
        self.program = program
        self.port = free_port(self.host)
        self.config_file = directory / "prometheus.json"
        self.log_file = directory / "prometheus.log"
        self.storage_dir = directory / "data"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(
        self,
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        interval_s: float = 1.0,
        job: str = "kwstream",
    ) -> None:
        """Scrape ``targets`` every ``interval_s`` and evaluate the rules at the same interval.

        Returns once the server reports ready; raises PrometheusError with its log otherwise.
        """
        if self._process is not None:
            raise PrometheusError("prometheus is already running")
        interval = f"{int(interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]},
            ],
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self._log_handle = self.log_file.open("wb")
        self._process = subprocess.Popen(
            [self.program, f"--config.file={self.config_file}",
             f"--storage.tsdb.path={self.storage_dir}",
             f"--web.listen-address={self.host}:{self.port}", "--log.level=info"],
            stdin=subprocess.DEVNULL, stdout=self._log_handle, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                returncode = self._process.returncode
                self.stop()
                raise PrometheusError(
                    f"prometheus exited with status {returncode} at start; log:\n{self.read_log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(
                    f"prometheus was not ready on {self.url} within "
                    f"{PROMETHEUS_START_TIMEOUT_S} s; log:\n{self.read_log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop prometheus with SIGTERM, then SIGKILL if it has not exited in time."""
        process = self._process
        self._process = None
        if process is not None:
            process.terminate()
            try:
                process.wait(PROMETHEUS_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def api(self, path: str, params: dict[str, str] | Sequence[tuple[str, str]] = ()) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; raise PrometheusError on an error."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            # Prometheus returns status 400 for a bad query, with a JSON body naming the error.
            body = json.loads(error.read() or b"{}")
        except (urllib.error.URLError, OSError) as error:
            raise PrometheusError(f"GET {url} failed: {error}") from error
        if body.get("status") != "success":
            raise PrometheusError(
                f"GET {url}: {body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query now; return its series as ``{"metric", "value"}`` dicts."""
        data = self.api("query", {"query": expr})
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} returned a {data['resultType']}, not a vector")
        return list(data["result"])

    def read_log(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log file)"


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A stopped PrometheusServer in tmp_path; call start(targets) in the test."""
    program = find_prometheus()
    if program is None:
        pytest.skip("prometheus is not installed (Debian package prometheus; "
                    "scripts/bootstrap.sh installs it)")
    server = PrometheusServer(tmp_path / "prometheus", program)
    try:
        yield server
    finally:
        server.stop()
