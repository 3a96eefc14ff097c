"""Service configuration: a TOML file, overridden by command-line flags.

Every key is checked before anything starts: an unknown key, a value of the wrong type or a
missing model file is a :class:`ConfigError` naming the key and the file, so the daemon never
runs with half a configuration.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kwstream.errors import ConfigError

SOURCE_KINDS = ("microphone", "file", "stdin")


@dataclass
class SourceConfig:
    kind: str = "microphone"
    """``microphone``, ``file`` (replayed in real time) or ``stdin`` (raw s16le PCM)."""
    device: str | int | None = None
    """Input device name (substring) or PortAudio index; None is the default device."""
    path: str | None = None
    """Audio file for ``kind = "file"``."""
    block_ms: int = 100
    """Block length a source delivers, in milliseconds. Per-block work dominates the daemon's
    CPU: 100 ms blocks cost about half the CPU of 40 ms blocks and add at most 100 ms of delay."""
    sample_rate: int = 16000
    """Sample rate of raw PCM on stdin."""
    channels: int = 1
    """Channels of raw PCM on stdin."""
    buffer_seconds: float = 2.0
    """Audio the ring buffer holds before it drops the oldest block."""


@dataclass
class ModelConfig:
    path: str | None = None
    """Model file; None is the model shipped in the package."""
    shadow_path: str | None = None
    """A second model that sees the same audio; its events carry ``"shadow": true``."""
    threads: int = 1
    """TFLite interpreter threads."""
    inference_stride: int | None = None
    """Hops between inferences; None takes the model card's value."""


@dataclass
class VadConfig:
    enabled: bool = True
    mode: int = 1
    hangover_ms: int = 1000


@dataclass
class MqttConfig:
    url: str | None = None
    """``mqtt://[user@]host[:port]`` or ``mqtts://...``; None disables MQTT."""
    password_file: str | None = None
    """File whose first line is the password (or set KWSTREAM_MQTT_PASSWORD)."""
    topic_prefix: str = "kws"
    ca_file: str | None = None
    queue_size: int = 10000


@dataclass
class MetricsConfig:
    port: int | None = None
    """Port of the Prometheus endpoint; None serves no endpoint."""
    address: str = "127.0.0.1"
    """Address the endpoint binds to; loopback unless set otherwise."""


@dataclass
class EventsConfig:
    file: str | None = None
    """JSON-lines file the events are appended to, besides stdout."""


@dataclass
class ScoringConfig:
    labels: str | None = None
    """Reference label file to score the stream against live."""
    tolerance_ms: float = 1000.0


@dataclass
class ServiceConfig:
    device_id: str = field(default_factory=socket.gethostname)
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def check(self, origin: str = "configuration") -> None:
        """Check values that depend on each other or on files; raise ConfigError."""
        if self.source.kind not in SOURCE_KINDS:
            raise ConfigError(
                f"{origin}: source.kind must be one of {', '.join(SOURCE_KINDS)}, "
                f"got {self.source.kind!r}"
            )
        if self.source.kind == "file" and not self.source.path:
            raise ConfigError(f"{origin}: source.kind is 'file' but source.path is not set")
        for key, value in (("source.block_ms", self.source.block_ms),
                           ("source.sample_rate", self.source.sample_rate),
                           ("source.channels", self.source.channels),
                           ("model.threads", self.model.threads),
                           ("mqtt.queue_size", self.mqtt.queue_size)):
            if value <= 0:
                raise ConfigError(f"{origin}: {key} must be positive, got {value}")
        if self.source.buffer_seconds <= 0:
            raise ConfigError(
                f"{origin}: source.buffer_seconds must be positive, got {self.source.buffer_seconds}"
            )
        if self.model.inference_stride is not None and self.model.inference_stride < 1:
            raise ConfigError(
                f"{origin}: model.inference_stride must be >= 1, got {self.model.inference_stride}"
            )
        if self.metrics.port is not None and not 0 <= self.metrics.port <= 65535:
            raise ConfigError(f"{origin}: metrics.port must be 0..65535, got {self.metrics.port}")
        for key, path in (("model.path", self.model.path),
                          ("model.shadow_path", self.model.shadow_path),
                          ("source.path", self.source.path if self.source.kind == "file" else None),
                          ("mqtt.password_file", self.mqtt.password_file),
                          ("mqtt.ca_file", self.mqtt.ca_file),
                          ("scoring.labels", self.scoring.labels)):
            if path is not None and Path(path).is_dir():
                raise ConfigError(f"{origin}: {key} = {path!r} is a folder; name a file")
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{origin}: {key} = {path!r}: file not found")
        if not self.device_id or "/" in self.device_id or "+" in self.device_id or "#" in self.device_id:
            raise ConfigError(
                f"{origin}: device_id {self.device_id!r} must be non-empty and contain no "
                "'/', '+' or '#' (it is an MQTT topic level)"
            )


SECTIONS: dict[str, type] = {
    "source": SourceConfig, "model": ModelConfig, "vad": VadConfig, "mqtt": MqttConfig,
    "metrics": MetricsConfig, "events": EventsConfig, "scoring": ScoringConfig,
}

# Accepted TOML types per annotation; TOML has no null, so optional keys are simply absent.
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "str | None": (str,), "int | None": (int,), "str | int | None": (str, int),
    "float | None": (int, float),
}


def _coerce(value: Any, annotation: str, key: str, origin: str) -> Any:
    accepted = _TYPES[annotation]
    if isinstance(value, bool) and bool not in accepted:
        accepted = ()
    if not isinstance(value, accepted):
        expected = " or ".join(t.__name__ for t in _TYPES[annotation])
        raise ConfigError(
            f"{origin}: {key} must be {expected}, got {type(value).__name__} {value!r}"
        )
    return float(value) if annotation.startswith("float") else value  # type: ignore[arg-type]


def load_config(path: Path | None) -> ServiceConfig:
    """Read a TOML configuration; None gives the defaults."""
    config = ServiceConfig()
    if path is None:
        return config
    origin = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"configuration file not found: {path}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{origin}: cannot read: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{origin}: invalid TOML: {error}") from error
    for key, value in data.items():
        if key == "device_id":
            config.device_id = _coerce(value, "str", key, origin)
            continue
        if key not in SECTIONS:
            raise ConfigError(
                f"{origin}: unknown key {key!r} (known: device_id, {', '.join(SECTIONS)})"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: [{key}] must be a table, got {value!r}")
        section = getattr(config, key)
        annotations = {f.name: str(f.type) for f in fields(section)}
        for name, item in value.items():
            if name not in annotations:
                raise ConfigError(
                    f"{origin}: unknown key {key}.{name} (known in [{key}]: "
                    f"{', '.join(annotations)})"
                )
            setattr(section, name, _coerce(item, annotations[name], f"{key}.{name}", origin))
    return config
