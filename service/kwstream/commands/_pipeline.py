"""Options and set-up shared by ``kwstream run`` and ``kwstream replay``.

Both commands build the same pipeline from the same options, so a replay measures exactly
what the daemon would do with that audio.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kwstream.config import ServiceConfig
from kwstream.errors import ConfigError
from kwstream.inference import KeywordModel
from kwstream.metrics import Metrics
from kwstream.modelcard import default_model_path
from kwstream.pipeline import Pipeline, VadSettings
from kwstream.runner import FileSink, MqttEventSink, Sink, StreamSink

log = logging.getLogger(__name__)


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """Register the options that ``run`` and ``replay`` share; absent ones keep the config's."""
    group = parser.add_argument_group("pipeline")
    group.add_argument("--model", type=Path, metavar="PATH",
                       help="model file with its card beside it (default: the shipped model)")
    group.add_argument("--shadow-model", type=Path, metavar="PATH",
                       help="a second model on the same audio; its events carry shadow=true "
                            "and are never sent to MQTT")
    group.add_argument("--threads", type=int, metavar="N", help="TFLite threads (default 1)")
    group.add_argument("--stride", type=int, metavar="HOPS", dest="inference_stride",
                       help="hops of 20 ms between two inferences (default: the model card's)")
    group.add_argument("--no-vad", action="store_true",
                       help="run the model on every window, speech or not")
    group.add_argument("--vad-mode", type=int, choices=[0, 1, 2, 3],
                       help="webrtcvad aggressiveness (default 1)")
    group.add_argument("--vad-hangover-ms", type=int, metavar="MS",
                       help="keep the VAD gate open this long after speech (default 1000)")
    group.add_argument("--mqtt", metavar="URL",
                       help="publish events to mqtt://[user@]host[:port] (off by default)")
    group.add_argument("--mqtt-password-file", type=Path, metavar="PATH",
                       help="file whose first line is the MQTT password "
                            "(or set KWSTREAM_MQTT_PASSWORD)")
    group.add_argument("--metrics-port", type=int, metavar="N",
                       help="serve Prometheus /metrics on this port (absent: no endpoint)")
    group.add_argument("--metrics-address", metavar="ADDR",
                       help="address the metrics endpoint binds to (default 127.0.0.1)")
    group.add_argument("--events", type=Path, metavar="FILE",
                       help="append events as JSON lines to FILE, besides stdout")
    group.add_argument("--device-id", metavar="ID",
                       help="device id in events and MQTT topics (default: the host name)")


def apply_pipeline_options(config: ServiceConfig, args: argparse.Namespace) -> None:
    """Override configuration values with the flags given on the command line."""
    if args.model is not None:
        config.model.path = str(args.model)
    if args.shadow_model is not None:
        config.model.shadow_path = str(args.shadow_model)
    if args.threads is not None:
        config.model.threads = args.threads
    if args.inference_stride is not None:
        config.model.inference_stride = args.inference_stride
    if args.no_vad:
        config.vad.enabled = False
    if args.vad_mode is not None:
        config.vad.mode = args.vad_mode
    if args.vad_hangover_ms is not None:
        config.vad.hangover_ms = args.vad_hangover_ms
    if args.mqtt is not None:
        config.mqtt.url = args.mqtt
    if args.mqtt_password_file is not None:
        config.mqtt.password_file = str(args.mqtt_password_file)
    if args.metrics_port is not None:
        config.metrics.port = args.metrics_port
    if args.metrics_address is not None:
        config.metrics.address = args.metrics_address
    if args.events is not None:
        config.events.file = str(args.events)
    if args.device_id is not None:
        config.device_id = args.device_id


def scorer_factory(
    labels_path: Path, tolerance_ms: float
) -> tuple[list[Any], Callable[[list[KeywordModel]], dict[str, Any]]]:
    """Read a label file; return its labels and a function that builds one scorer per model.

    Each model's scorer is checked first: every label must be one of its keywords or
    ``_unknown_``, so a label file for another model is rejected before any audio is read.
    """
    from kwstream.labels import read_labels
    from kwstream.scoring import StreamingScorer

    labels = read_labels(labels_path)

    def scorers_for(models: list[KeywordModel]) -> dict[str, Any]:
        for model in models:
            known = set(model.card.keywords) | {"_unknown_"}
            for reference in labels:
                if reference.label not in known:
                    raise ConfigError(
                        f"{labels_path}: label {reference.label!r} at {reference.start_ms} ms is "
                        f"neither a keyword of model {model.id} nor _unknown_"
                    )
        return {m.id: StreamingScorer(labels, m.card.keywords, tolerance_ms) for m in models}

    return labels, scorers_for


def load_models(config: ServiceConfig) -> tuple[KeywordModel, KeywordModel | None]:
    """Load and check the primary and shadow models before any audio is read."""
    path = Path(config.model.path) if config.model.path else default_model_path()
    primary = KeywordModel(path, threads=config.model.threads)
    shadow = None
    if config.model.shadow_path:
        shadow = KeywordModel(Path(config.model.shadow_path), threads=config.model.threads)
    return primary, shadow


@dataclass
class Service:
    """The pipeline, its sinks and its metrics endpoint, ready to run."""

    config: ServiceConfig
    metrics: Metrics
    pipeline: Pipeline
    sinks: list[Sink]
    mqtt: Any | None = None
    http_server: Any | None = None
    on_close: list[Callable[[], None]] = field(default_factory=list)

    async def start_mqtt(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.start()

    def close_endpoint(self) -> None:
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
            self.http_server = None


def build_service(
    config: ServiceConfig,
    scorers_for: Callable[[list[KeywordModel]], dict[str, Any]] | None = None,
    keep_trace: bool = False,
    events_to_stdout: bool = True,
) -> Service:
    """Load the models, build the pipeline and its sinks, and start the metrics endpoint."""
    primary, shadow = load_models(config)
    metrics = Metrics(mqtt=bool(config.mqtt.url))
    scorers = scorers_for([m for m in (primary, shadow) if m is not None]) if scorers_for else None
    vad = VadSettings(enabled=config.vad.enabled, mode=config.vad.mode,
                      hangover_ms=config.vad.hangover_ms)
    pipeline = Pipeline(primary, metrics, vad=vad, shadow=shadow,
                        inference_stride=config.model.inference_stride, scorers=scorers,
                        keep_trace=keep_trace)
    sinks: list[Sink] = []
    if events_to_stdout:
        sinks.append(StreamSink())
    if config.events.file:
        sinks.append(FileSink(Path(config.events.file)))
    service = Service(config=config, metrics=metrics, pipeline=pipeline, sinks=sinks)
    if config.mqtt.url:
        from kwstream.mqtt import MqttSettings, MqttSink

        password_file = Path(config.mqtt.password_file) if config.mqtt.password_file else None
        settings = MqttSettings.from_url(
            config.mqtt.url, password_file=password_file, ca_file=config.mqtt.ca_file,
            topic_prefix=config.mqtt.topic_prefix, queue_size=config.mqtt.queue_size,
        )
        service.mqtt = MqttSink(settings, device=config.device_id, metrics=metrics)
        sinks.append(MqttEventSink(service.mqtt))
    if config.metrics.port is not None:
        service.http_server = start_metrics_endpoint(metrics, config.metrics.address,
                                                     config.metrics.port)
    return service


def start_metrics_endpoint(metrics: Metrics, address: str, port: int) -> Any:
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=address, registry=metrics.registry)
    except OSError as error:
        raise ConfigError(f"cannot serve metrics on {address}:{port}: {error}") from error
    log.info("serving Prometheus metrics on http://%s:%d/metrics", address,
             server.server_address[1])
    return server

