"""Deployment files: the systemd unit, the Pi installer (run into a staging tree), the
mosquitto configuration (started for real), the compose file and the aarch64 wheel check."""

from __future__ import annotations

import getpass
import itertools
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kwstream.config import load_config
from kwstream.modelcard import default_model_path
from tests.prometheus_fixture import free_port
from tests.support import silence, write_wav

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT_FILE = DEPLOY / "systemd" / "kwstream.service"
INSTALLER = DEPLOY / "install-pi.sh"
CONFIG_EXAMPLE = DEPLOY / "config.example.toml"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "kwstream.conf"
COMPOSE_FILE = DEPLOY / "compose.yaml"
WHEEL_CHECK = REPO / "scripts" / "check-aarch64-wheels.sh"

COMMAND_TIMEOUT_S = 60
WHEEL_CHECK_TIMEOUT_S = 300
BROKER_START_TIMEOUT_S = 5.0
MQTT_TIMEOUT_S = 5.0
NOTIFY_TIMEOUT_S = 30.0
# systemd-analyze security rates a unit from 0 (locked down) to 10 (fully exposed).
MAX_EXPOSURE = 2.5


def read_unit(path: Path) -> dict[str, list[str]]:
    """Parse a unit file into "Section.Key" -> values, keeping repeated keys in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          check=False, **kwargs)


def program_or_skip(name: str, package: str) -> str:
    program = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if program is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return program


def unit_for_verify(directory: Path) -> Path:
    """Copy the unit with ExecStart on an executable that exists here, as verify requires."""
    text = UNIT_FILE.read_text(encoding="utf-8")
    replaced = text.replace("ExecStart=/opt/kwstream/venv/bin/kwstream ",
                            f"ExecStart={sys.executable} -m kwstream ")
    assert replaced != text, "ExecStart=/opt/kwstream/venv/bin/kwstream not found in the unit"
    path = directory / "kwstream.service"
    path.write_text(replaced, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# systemd unit


def test_unit_settings() -> None:
    unit = read_unit(UNIT_FILE)

    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.WatchdogSec"] == ["30"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.ExecStart"] == [
        "/opt/kwstream/venv/bin/kwstream run --config /etc/kwstream/config.toml"]
    assert unit["Service.User"] == ["kwstream"]
    assert unit["Service.SupplementaryGroups"] == ["audio"]
    assert unit["Service.EnvironmentFile"] == ["-/etc/kwstream/kwstream.env"]
    assert unit["Service.StateDirectory"] == ["kwstream"]
    assert unit["Service.ReadWritePaths"] == ["/var/lib/kwstream"]
    assert unit["Service.StandardError"] == ["journal"]
    assert unit["Service.NoNewPrivileges"] == ["yes"]
    assert unit["Service.ProtectSystem"] == ["strict"]
    assert unit["Service.ProtectHome"] == ["yes"]
    assert unit["Service.PrivateTmp"] == ["yes"]
    assert unit["Service.DevicePolicy"] == ["closed"]
    assert unit["Service.DeviceAllow"] == ["char-alsa rw"]
    assert "Service.PrivateDevices" not in unit
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def test_unit_paths_match_installer() -> None:
    script = INSTALLER.read_text(encoding="utf-8")
    unit = read_unit(UNIT_FILE)
    venv_dir = re.search(r"^VENV_DIR=(\S+)$", script, re.MULTILINE)
    config_dir = re.search(r"^CONFIG_DIR=(\S+)$", script, re.MULTILINE)

    assert venv_dir is not None
    assert config_dir is not None
    assert unit["Service.ExecStart"][0].startswith(f"{venv_dir.group(1)}/bin/kwstream ")
    assert f"--config {config_dir.group(1)}/config.toml" in unit["Service.ExecStart"][0]
    assert unit["Service.EnvironmentFile"] == [f"-{config_dir.group(1)}/kwstream.env"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    program = program_or_skip("systemd-analyze", "systemd")
    unit = unit_for_verify(tmp_path)

    result = run([program, "verify", "--man=no", str(unit)])

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_unit_security_exposure(tmp_path: Path) -> None:
    program = program_or_skip("systemd-analyze", "systemd")
    unit = unit_for_verify(tmp_path)

    result = run([program, "security", "--offline=yes", "--no-pager", str(unit)])
    match = re.search(r"Overall exposure level for kwstream\.service: ([0-9.]+)", result.stdout)

    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")
def test_daemon_notifies_systemd(tmp_path: Path) -> None:
    """kwstream run speaks the sd_notify protocol that Type=notify and WatchdogSec expect."""
    socket_path = tmp_path / "notify.sock"
    audio = write_wav(tmp_path / "silence.wav", silence(20.0))
    messages: list[tuple[float, bytes]] = []
    metrics_port = free_port()
    environment = {**os.environ, "NOTIFY_SOCKET": str(socket_path),
                   "WATCHDOG_USEC": "1000000"}
    log_path = tmp_path / "daemon.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener, \
            log_path.open("wb") as log:
        listener.bind(str(socket_path))
        listener.settimeout(0.2)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "kwstream", "run", "--file", str(audio),
             "--metrics-port", str(metrics_port)],
            env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        metrics_at_ready = False
        try:
            started = time.monotonic()
            deadline = started + NOTIFY_TIMEOUT_S
            # READY=1, then WATCHDOG=1 every 0.5 s (half of WATCHDOG_USEC): wait for three.
            while time.monotonic() < deadline and daemon.poll() is None:
                if sum(message == b"WATCHDOG=1" for _, message in messages) >= 3:
                    break
                try:
                    message = listener.recv(4096)
                except TimeoutError:
                    continue
                messages.append((time.monotonic() - started, message))
                if message == b"READY=1":
                    metrics_at_ready = metrics_served(metrics_port)
            daemon.terminate()
            daemon.wait(COMMAND_TIMEOUT_S)
            while True:
                try:
                    messages.append((time.monotonic() - started, listener.recv(4096)))
                except TimeoutError:
                    break
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    stderr = log_path.read_text(encoding="utf-8", errors="replace")
    names = [message for _, message in messages]
    watchdog_times = [when for when, message in messages if message == b"WATCHDOG=1"]

    assert names[:1] == [b"READY=1"], stderr
    assert metrics_at_ready, "the metrics endpoint was not up when READY=1 arrived"
    assert len(watchdog_times) >= 3, names
    assert max(b - a for a, b in itertools.pairwise(watchdog_times)) < 1.0
    assert names[-1] == b"STOPPING=1"
    assert daemon.returncode == 0, stderr


def metrics_served(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0):
            return True
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------------------------------
# Installer


def run_installer(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(INSTALLER), *args])


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_installer_root_writes_files(tmp_path: Path) -> None:
    result = run_installer("--root", str(tmp_path), str(REPO))
    config = tmp_path / "etc" / "kwstream" / "config.toml"
    environment = tmp_path / "etc" / "kwstream" / "kwstream.env"
    unit = tmp_path / "etc" / "systemd" / "system" / "kwstream.service"

    assert result.returncode == 0, result.stderr
    assert unit.read_text(encoding="utf-8") == UNIT_FILE.read_text(encoding="utf-8")
    assert file_mode(unit) == 0o644
    assert file_mode(config) == 0o640
    assert file_mode(environment) == 0o600
    assert file_mode(config.parent) == 0o750
    assert "#KWSTREAM_MQTT_PASSWORD=" in environment.read_text(encoding="utf-8")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "etc/kwstream/config.toml", "etc/kwstream/kwstream.env",
        "etc/systemd/system/kwstream.service"]


def test_installer_config_enables_metrics(tmp_path: Path) -> None:
    result = run_installer("--root", str(tmp_path), str(REPO))
    installed = tmp_path / "etc" / "kwstream" / "config.toml"
    example_lines = CONFIG_EXAMPLE.read_text(encoding="utf-8").splitlines()
    installed_lines = installed.read_text(encoding="utf-8").splitlines()
    changed = [(old, new) for old, new in zip(example_lines, installed_lines, strict=True)
               if old != new]
    config = load_config(installed)

    assert result.returncode == 0, result.stderr
    assert changed == [("# port = 9108", "port = 9108")]
    assert config.metrics.port == 9108
    assert config.metrics.address == "127.0.0.1"
    assert config.source.kind == "microphone"


def test_installer_prints_system_commands(tmp_path: Path) -> None:
    result = run_installer("--root", str(tmp_path), str(REPO))
    lines = result.stdout.splitlines()

    useradd = [line for line in lines if line.startswith("would run: useradd ")]

    assert result.returncode == 0, result.stderr
    assert len(useradd) == 1, result.stdout
    assert "--system" in useradd[0]
    assert "--groups audio" in useradd[0]
    assert useradd[0].endswith(" kwstream")
    assert "would run: python3 -m venv /opt/kwstream/venv" in lines
    assert any(line.startswith("would run: /opt/kwstream/venv/bin/python -m pip install")
               and line.endswith(f"{REPO}\\[mic\\]") for line in lines), result.stdout
    assert "would run: systemctl daemon-reload" in lines
    assert "would run: systemctl enable kwstream.service" in lines
    assert not any(line.startswith("running:") for line in lines)


def test_installer_keeps_existing_config(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "kwstream" / "config.toml"
    environment = tmp_path / "etc" / "kwstream" / "kwstream.env"
    config.parent.mkdir(parents=True)
    config.write_text('device_id = "kitchen"\n', encoding="utf-8")
    environment.write_text("KWSTREAM_MQTT_PASSWORD=secret\n", encoding="utf-8")

    result = run_installer("--root", str(tmp_path), str(REPO))

    assert result.returncode == 0, result.stderr
    assert config.read_text(encoding="utf-8") == 'device_id = "kitchen"\n'
    assert environment.read_text(encoding="utf-8") == "KWSTREAM_MQTT_PASSWORD=secret\n"
    assert f"keeping existing {config}" in result.stdout
    assert (tmp_path / "etc" / "systemd" / "system" / "kwstream.service").is_file()


def test_installer_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = run_installer("--dry-run", "--root", str(tmp_path), str(REPO))

    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert f"would write {tmp_path}/etc/kwstream/config.toml (mode 0640)" in result.stdout
    assert f"would write {tmp_path}/etc/systemd/system/kwstream.service (mode 0644)" in result.stdout


def test_installer_accepts_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "dist" / "kwstream-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"")
    root = tmp_path / "root"
    root.mkdir()

    result = run_installer("--root", str(root), str(wheel))

    assert result.returncode == 0, result.stderr
    assert f"pip install --upgrade {wheel}\\[mic\\]" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing PACKAGE"),
        (["/nonexistent/kwstream"], "neither a .whl file nor a directory with pyproject.toml"),
        (["--root", "/nonexistent/root", str(REPO)], "--root /nonexistent/root: directory not found"),
        (["--bogus", str(REPO)], "unknown option --bogus"),
    ],
)
def test_installer_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = run_installer(*args)

    assert result.returncode == 2
    assert message in result.stderr


# ---------------------------------------------------------------------------------------
# mosquitto


class Broker:
    """mosquitto loading deploy/mosquitto/kwstream.conf from an include_dir, as Debian does."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, program: str, password_file: Path) -> None:
        self.program = program
        self.port = free_port(self.host)
        self.log_file = directory / "mosquitto.log"
        conf_dir = directory / "conf.d"
        conf_dir.mkdir()
        persistence_dir = directory / "persistence"
        persistence_dir.mkdir()

        shipped = MOSQUITTO_CONF.read_text(encoding="utf-8")
        rewritten = shipped.replace("listener 1883 127.0.0.1", f"listener {self.port} {self.host}")
        rewritten = rewritten.replace("password_file /etc/mosquitto/kwstream.passwd",
                                      f"password_file {password_file}")
        assert rewritten.count(str(self.port)) == 1, "listener line not found in kwstream.conf"
        assert str(password_file) in rewritten, "password_file line not found in kwstream.conf"
        (conf_dir / "kwstream.conf").write_text(rewritten, encoding="utf-8")

        # What Debian's /etc/mosquitto/mosquitto.conf sets, with temporary paths.
        self.config_file = directory / "mosquitto.conf"
        self.config_file.write_text(
            f"persistence_location {persistence_dir}/\n"
            f"log_dest file {self.log_file}\n"
            # When started as root, mosquitto switches to this user.
            f"user {getpass.getuser()}\n"
            f"include_dir {conf_dir}\n",
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.program, "-c", str(self.config_file)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"mosquitto exited with status {self.process.returncode} "
                                     f"at start; log:\n{self.read_log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"mosquitto did not listen on port {self.port} within "
                                         f"{BROKER_START_TIMEOUT_S} s; log:\n{self.read_log()}"
                                         ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop with SIGTERM, which saves the persistence database."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(BROKER_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def read_log(self) -> str:
        if not self.log_file.exists():
            return "(no log file)"
        return self.log_file.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def shipped_broker(tmp_path: Path) -> Iterator[Broker]:
    program = program_or_skip("mosquitto", "mosquitto")
    passwd = program_or_skip("mosquitto_passwd", "mosquitto")
    password_file = tmp_path / "kwstream.passwd"
    subprocess.run([passwd, "-b", "-c", str(password_file), "kwstream", "test-password"],
                   check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S)
    os.chmod(password_file, 0o600)
    broker = Broker(tmp_path, program, password_file)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def mqtt_connect(broker: Broker, username: str | None, password: str | None) -> tuple[Any, Any]:
    """Connect with paho-mqtt; return (client, reason code of CONNACK)."""
    import paho.mqtt.client as mqtt

    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        outcome["reason_code"] = reason_code
        connected.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{time.monotonic_ns()}")
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    if not connected.wait(MQTT_TIMEOUT_S):
        client.loop_stop()
        raise AssertionError(f"no CONNACK within {MQTT_TIMEOUT_S} s")
    return client, outcome["reason_code"]


def read_retained(broker: Broker, topic: str) -> bytes | None:
    client, reason = mqtt_connect(broker, "kwstream", "test-password")
    received = threading.Event()
    payloads: list[bytes] = []

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        payloads.append(message.payload)
        received.set()

    client.on_message = on_message
    try:
        assert not reason.is_failure, reason
        client.subscribe(topic, qos=1)
        received.wait(MQTT_TIMEOUT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return payloads[0] if payloads else None


@pytest.mark.broker
def test_mosquitto_rejects_anonymous(shipped_broker: Broker) -> None:
    client, reason = mqtt_connect(shipped_broker, None, None)
    client.disconnect()
    client.loop_stop()

    assert reason.is_failure
    assert str(reason) == "Not authorized"


@pytest.mark.broker
def test_mosquitto_rejects_wrong_password(shipped_broker: Broker) -> None:
    client, reason = mqtt_connect(shipped_broker, "kwstream", "wrong-password")
    client.disconnect()
    client.loop_stop()

    assert reason.is_failure


@pytest.mark.broker
def test_mosquitto_keeps_retained_across_restart(shipped_broker: Broker) -> None:
    client, reason = mqtt_connect(shipped_broker, "kwstream", "test-password")
    try:
        assert not reason.is_failure, reason
        info = client.publish("kws/test-device/status", b"online", qos=1, retain=True)
        info.wait_for_publish(MQTT_TIMEOUT_S)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()

    shipped_broker.stop()
    shipped_broker.start()

    assert read_retained(shipped_broker, "kws/test-device/status") == b"online"
    assert "Error" not in shipped_broker.read_log()


# ---------------------------------------------------------------------------------------
# Compose file and Grafana provisioning


def load_yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the compose file")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_compose_mounts_existing_files() -> None:
    compose = load_yaml(COMPOSE_FILE)
    ignored = (DEPLOY / "mosquitto" / ".gitignore").read_text(encoding="utf-8").splitlines()

    assert set(compose["services"]) == {"prometheus", "grafana", "mosquitto"}
    for name, service in compose["services"].items():
        assert service["network_mode"] == "host", name
        assert ":" in service["image"], f"{name}: image without a tag"
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if not source.startswith("./"):
                assert source in compose["volumes"], f"{name}: unknown volume {source}"
                continue
            path = DEPLOY / source
            if path.name == "kwstream.passwd":
                assert "kwstream.passwd" in ignored
                continue
            assert path.exists(), f"{name}: {source} not found in deploy/"


def test_compose_matches_provisioning() -> None:
    compose = load_yaml(COMPOSE_FILE)
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    providers = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "kwstream.yml")
    prometheus_flags = compose["services"]["prometheus"]["command"]
    grafana_mounts = dict(volume.split(":")[:2]
                          for volume in compose["services"]["grafana"]["volumes"])

    assert "--web.listen-address=127.0.0.1:9090" in prometheus_flags
    assert datasources["datasources"][0]["url"] == "http://127.0.0.1:9090"
    assert datasources["datasources"][0]["type"] == "prometheus"
    assert grafana_mounts["./grafana/dashboards"] == providers["providers"][0]["options"]["path"]


# ---------------------------------------------------------------------------------------
# aarch64 wheels


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/numpy/", timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def run_wheel_check(*args: str) -> subprocess.CompletedProcess[str]:
    if not pypi_reachable():
        pytest.skip("PyPI is unreachable, so pip cannot download the aarch64 wheels")
    return subprocess.run(["bash", str(WHEEL_CHECK), *args], capture_output=True, text=True,
                          timeout=WHEEL_CHECK_TIMEOUT_S, check=False,
                          env={**os.environ, "PYTHON": sys.executable})


def test_aarch64_wheels_resolve() -> None:
    result = run_wheel_check()
    resolved = dict(line.split()[:2] for line in result.stdout.splitlines()
                    if not line.startswith("check-aarch64-wheels:"))

    assert result.returncode == 0, result.stdout + result.stderr
    for package in ("numpy", "soundfile", "soxr", "ai-edge-litert", "prometheus-client",
                    "aiomqtt", "webrtcvad-wheels", "sounddevice"):
        assert package in resolved, result.stdout
        wheel = resolved[package]
        assert wheel.endswith(".whl"), wheel
        assert "aarch64" in wheel or wheel.endswith("-none-any.whl"), wheel
        assert "-cp311-" in wheel or "-abi3-" in wheel or "-none-" in wheel, wheel


def test_aarch64_check_names_missing_wheel(tmp_path: Path) -> None:
    # webrtcvad (unlike webrtcvad-wheels) is published as an sdist only.
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "probe"\nversion = "0"\n'
                         'dependencies = ["webrtcvad==2.0.10"]\n', encoding="utf-8")

    result = run_wheel_check("--pyproject", str(pyproject), "--extras", "")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "no CPython 3.11 aarch64 wheel for webrtcvad==2.0.10" in result.stderr
