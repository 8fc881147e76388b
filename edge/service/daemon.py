"""`hlgfa run`: one camera's inspection daemon, from a `DaemonConfig` to exit status.

Start-up order is chosen so that every refusal happens before READY=1 and before the camera
starts: model directory (exit 66 if damaged) → thresholds bound to that model (exit 78 if fitted
on another) → publisher (78 if the endpoint cannot be bound) → health/metrics (78 if the port is
taken) → backend opened (70; 66 for thresholds calibrated on another engine than it loaded, or on
none where it runs one: edge/artifacts/engine_sidecar.py binding_problem) and warmed up → source
(78 for a bad setting; an absent camera is not a refusal: it is reported on the fault topic and
retried) → pipeline → READY=1.

The main thread owns signals and the watchdog: it pings systemd and sends heartbeats only while
every stage is alive and none is stuck, so a hung stage makes both stop and the PLC bridge and
systemd each fail safe on their own. SIGTERM/SIGINT: stop acquiring, finish the frames in flight
(publishing a "shutdown" fault for any that cannot finish within drain_timeout_s), a last heartbeat,
exit 0. A stage still inside a call past drain_timeout_s keeps the backend or source it uses
open; `hlgfa run` (edge.service.daemon_cli) then ends the process without the interpreter's teardown.
SIGHUP: reload the thresholds file atomically (a file that fails to load or is bound to another
model or engine keeps the old thresholds and is published as a fault).
"""

from __future__ import annotations

import threading
from typing import Callable

from edge.config.daemon import DaemonConfig
from edge.core.errors import HlgfaError, ModelFileError, StageError
from edge.core.logs import camera_log
from edge.inspection.conclude import VerdictSettings
from edge.inspection.pipeline import Pipeline
from edge.core.signals import SignalRequests
from edge.sources.base import SourceUnavailable

LOOP_PERIOD_S = 0.05  # main loop: watchdog, heartbeats, signals, queue gauges


class Daemon:
    """`Daemon(config).run()` → exit status. `backend_wrapper(backend) -> backend` wraps every
    backend the daemon opens and `source_wrapper(source) -> source` its source (tests inject faults
    and hold frames back with them; `hlgfa run` passes neither)."""

    def __init__(self, config: DaemonConfig, backend_wrapper: Callable | None = None,
                 source_wrapper: Callable | None = None, signals: SignalRequests | None = None):
        self.config = config
        self.log = camera_log(__name__, config.camera)
        self.backend_wrapper = backend_wrapper
        self.source_wrapper = source_wrapper
        # `hlgfa run` passes the requests it began collecting at its start (edge.core.signals).
        self.signals = signals if signals is not None else SignalRequests()
        self._stop = self.signals.stop
        self._reload = self.signals.reload
        self.pipeline: Pipeline | None = None
        self.publisher = None
        self.health = None
        self.ready = threading.Event()  # set after READY=1 (tests wait on it)
        # What the open backend runs, for the thresholds' engine binding on SIGHUP.
        self._engine_sidecar: dict | None = None
        self._backend_kind = ""
        self.shutdown_faults = 0

    def _open_backend(self, model_hash: str, thresholds):
        from edge.backends.base import open_backend

        # "auto" never ends on the PyTorch module here: run before export is an error naming the fix.
        backend = open_backend(self.config.backend, self.config.model, allow_torch=False,
                               log=camera_log("edge.backends", self.config.camera))
        if backend.model_hash != model_hash:
            backend.close()
            raise ModelFileError(f"backend {backend.kind}: serves model {backend.model_hash[:12]}, but {self.config.model} "
                                 f"is {model_hash[:12]}; rebuild it (`hlgfa engine ensure`) or fix backend.onnx/engine")
        problem = self._binding_problem(thresholds, backend.engine_sidecar, backend.kind)
        if problem is not None:
            backend.close()
            raise ModelFileError(f"thresholds file {self.config.thresholds_path}: {problem}")
        self._engine_sidecar, self._backend_kind = backend.engine_sidecar, backend.kind
        if self.backend_wrapper is not None:
            backend = self.backend_wrapper(backend)
        backend.warmup()
        return backend

    def _binding_problem(self, thresholds, engine_sidecar: dict | None, backend_kind: str) -> str | None:
        """Why `thresholds` must not judge what this backend scores (edge/artifacts/engine_sidecar.py), or None."""
        from edge.artifacts.engine_sidecar import binding_problem

        return binding_problem(thresholds, engine_sidecar, getattr(self.config.backend, "engine_binding", "exact"),
                               backend_kind)

    def run(self) -> int:
        from edge.service.health import Health
        from edge.artifacts.model_dir import load_model_info
        from edge.transport.publisher import Publisher
        from edge.sources.factory import build_source
        from edge.artifacts.thresholds import load_thresholds
        from edge.inspection.parts import PartTracker

        config = self.config
        info = load_model_info(config.model)
        thresholds = load_thresholds(config.thresholds_path, info.model_hash)
        spec = info.preprocess
        closers: list[Callable[[], None]] = []
        code = 0
        parts = PartTracker(config.parts)
        try:
            self.publisher = Publisher(config.camera, config.publish, spec.input_size, on_part=parts.arm)
            closers.append(self.publisher.close)
            self.health = Health(config.camera, config.health.metrics_port, config.health.metrics_address)
            closers.append(self.health.close)
            backend = self._open_backend(info.model_hash, thresholds)
            closers.append(lambda: self._close_unless_in_use(self.pipeline.supervisor.backend if self.pipeline else backend, "infer"))
            source = build_source(config.source)
            if self.source_wrapper is not None:
                source = self.source_wrapper(source)
            source_open = True
            try:
                source.open()
            except SourceUnavailable as error:
                # An absent camera at start is the same condition as one lost later: report and retry.
                source_open = False
                self.log.warning("source not available at start (%s); retrying", error)
            closers.append(lambda: self._close_unless_in_use(source, "acquire"))
            self.pipeline = Pipeline(
                config.camera, config.pipeline.model_copy(update={"overload": config.overload_policy}), source,
                config.source.timeout_s, backend,
                lambda: self._open_backend(info.model_hash, self.pipeline.concluder.thresholds), config.backend, spec,
                VerdictSettings(config.pipeline.deadline_ms, config.publish.maps, config.quality.overrides()),
                thresholds, self.publisher, self.health, info.model_hash, source_open=source_open, parts=parts)
            self.health.model_info(model_hash=info.model_hash, thresholds_version=thresholds.version,
                                   backend=getattr(backend, "kind", "?"))
            self.pipeline.start()
            self.health.ready()
            self.ready.set()
            self.log.info("inspecting with %s backend, model %s, thresholds %s (%s)", getattr(backend, "kind", "?"),
                          info.model_hash[:12], thresholds.version, config.thresholds_path)
            code = self._loop(info.model_hash)
        finally:
            if self.pipeline is not None:
                self.health.stopping()
                self.shutdown_faults = self.pipeline.finish(config.pipeline.drain_timeout_s)
                if self.pipeline.fatal is not None and code == 0:
                    code = self.pipeline.fatal.exit_code
                counters = self.health.counters()
                try:
                    self.publisher.heartbeat(counters, state="stopping", source=self.pipeline.source_status())
                except HlgfaError as error:
                    self.log.error("last heartbeat not sent: %s", error)
                self.log.info("stopped after %d frames read, %d decided (ok %d, reject %d, fault %d, dropped %d)",
                              self.pipeline.reads, counters.frames, counters.ok, counters.reject, counters.fault,
                              counters.dropped)
            for close in reversed(closers):
                try:
                    close()
                except Exception as error:  # closing must go on: the other resources still need releasing
                    self.log.warning("while closing: %s", error)
        return code

    def _close_unless_in_use(self, part, stage: str) -> None:
        """Close `part` (the backend, the source) unless pipeline stage `stage` is still inside a call
        on it, past the drain timeout: closing a session, device buffers or a camera under a running
        call can crash the process, or block its exit behind a call that does not return. The
        process exit releases such a part instead (see `edge.service.daemon_cli`)."""
        if self.pipeline is not None and stage in self.pipeline.running_stages():
            self.log.warning("%s stage still inside a call; %s left open for the process exit to release",
                             stage, type(part).__name__)
            return
        part.close()

    def _loop(self, model_hash: str) -> int:
        pipeline, health, publisher = self.pipeline, self.health, self.publisher
        while True:
            if self._reload.is_set():
                self._reload.clear()
                self._reload_thresholds(model_hash)
            if self._stop.is_set():
                self.log.info("stop requested; finishing frames in flight")
                return 0
            healthy, problems = pipeline.health_state()
            if healthy:
                health.tick()
                if publisher.heartbeat_due():
                    drift = pipeline.concluder.drift.status()
                    health.drift(drift)
                    publisher.maybe_heartbeat(health.counters(), pipeline.source_status(), drift=drift)
            else:
                # No more watchdog pings or heartbeats: systemd and the PLC bridge both fail safe.
                self.log.error("pipeline unhealthy: %s", "; ".join(problems))
                return (pipeline.fatal or StageError("pipeline unhealthy")).exit_code
            pipeline.concluder.conclude_missing_parts()
            if pipeline.done:
                return 0
            for stage, depth in pipeline.queue_depths().items():
                health.queue_depth(stage, depth)
            self._stop.wait(LOOP_PERIOD_S)

    def _reload_thresholds(self, model_hash: str) -> None:
        from edge.artifacts.thresholds import load_thresholds

        concluder = self.pipeline.concluder
        old = concluder.thresholds
        self.health.reloading()
        try:
            new = load_thresholds(self.config.thresholds_path, model_hash)
            problem = self._binding_problem(new, self._engine_sidecar, self._backend_kind)
            if problem is not None:
                raise ModelFileError(f"thresholds file {self.config.thresholds_path}: {problem}")
        except HlgfaError as error:
            concluder.report_fault("thresholds_reload_failed", f"{error}; keeping thresholds version {old.version}")
        else:
            concluder.set_thresholds(new)
            self.health.model_info(model_hash=model_hash, thresholds_version=new.version,
                                   backend=getattr(self.pipeline.supervisor.backend, "kind", "?"))
            self.log.info("thresholds reloaded: version %s → %s (image threshold %.4g)", old.version, new.version,
                          new.image_threshold)
        self.health.reloaded()
