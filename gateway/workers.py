"""Several gateway worker processes on one port (``GATEWAY_WORKERS=N``), one ``/metrics`` for all.

One gateway process is one Python interpreter: its pre- and post-processing (JPEG decode, resize,
NMS, tokenisation) use one core at a time. ``serve_workers`` runs N uvicorn workers that share
the listening socket; each builds its own :class:`~gateway.settings.Settings` and app
(:func:`app_factory`), so each owns its gRPC channel to Triton and its own shared-memory regions
(named ``gw-<pid>-...``, removed when the worker shuts down).

Metrics: prometheus_client's multiprocess mode. Every worker writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` (any worker) aggregates all of them with a
``MultiProcessCollector``, so one scrape counts every worker's requests. The directory is made
fresh for each run (a temporary one unless set), emptied at start and at exit. Counters and
histograms need nothing more; a gauge added later needs a ``multiprocess_mode`` (e.g. ``livesum``).
With ``GATEWAY_METRICS_PORT`` the supervising parent serves the aggregate on that port instead
(prometheus_client's own HTTP server: every path answers the metrics). ``process_cpu_seconds_total``
and ``process_resident_memory_bytes`` are then the sums over the supervisor and its workers
(:class:`WorkerGroupCollector`), read from ``/proc`` at scrape time.

A worker that dies without shutting down (SIGKILL, the OOM killer, a hung worker uvicorn kills) is
replaced by uvicorn's supervisor; :class:`Supervisor` then also cleans up what it left: its
``livesum`` gauge files (``gateway_inflight_requests`` counted its in-flight requests for ever) and,
with ``GATEWAY_TRITON_SHARED_MEMORY``, its shared-memory regions (still registered with Triton, which
kept them mapped, and their ``/dev/shm`` names until the supervisor exited).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from multiprocessing import shared_memory
from socket import socket

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from uvicorn.supervisors import Multiprocess

from gateway.rate_limit import SharedTokenBuckets
from gateway.server import uvicorn_options
from gateway.settings import Settings
from gateway.shared_memory import region_prefix

LOGGER = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_ENV = "GATEWAY_WORKERS_SUPERVISOR_PID"  # set by serve_workers for its workers (internal)
RATE_LIMIT_TABLE_ENV = "GATEWAY_WORKERS_RATE_LIMIT_TABLE"  # the workers' shared buckets (internal)


def scrape_registry(own: CollectorRegistry) -> CollectorRegistry:
    """What ``/metrics`` exposes: ``own`` (one process), or every worker's samples aggregated from
    ``PROMETHEUS_MULTIPROC_DIR`` when it is set (multiprocess mode)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return own
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    supervisor = os.environ.get(SUPERVISOR_ENV)
    registry.register(WorkerGroupCollector(int(supervisor) if supervisor else os.getpid()))
    return registry


class WorkerGroupCollector(Collector):
    """CPU seconds and resident memory of the supervisor ``root`` plus its child processes, from ``/proc``.

    prometheus_client's ``ProcessCollector`` sees one process; with workers the gateway is several.

    Args:
        root: the supervising process (uvicorn's), whose children are the workers.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _pids(self) -> list[int]:
        try:
            children = pathlib.Path(f"/proc/{self.root}/task/{self.root}/children").read_text().split()
        except OSError:
            children = []
        return [self.root, *(int(pid) for pid in children)]

    def collect(self) -> Iterator[Metric]:
        cpu_s = rss = 0.0
        processes = 0
        for pid in self._pids():
            try:
                stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue  # exited since it was listed
            fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            cpu_s += (int(fields[11]) + int(fields[12])) / self._ticks  # utime + stime
            rss += int(fields[21]) * self._page
            processes += 1
        yield CounterMetricFamily("process_cpu_seconds", "CPU seconds of the gateway's processes", value=cpu_s)
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of the gateway's processes", rss)
        yield GaugeMetricFamily(
            "gateway_processes",
            "Gateway processes: the supervisor, its workers and multiprocessing's resource tracker",
            processes,
        )


def shared_buckets(settings: Settings) -> SharedTokenBuckets | None:
    """The rate limit's table shared by every worker of this gateway (made by :func:`serve_workers`),
    or None in a single-process gateway."""
    table = os.environ.get(RATE_LIMIT_TABLE_ENV)
    if not table:
        return None
    return SharedTokenBuckets(
        pathlib.Path(table), settings.rate_limit_per_s, settings.rate_limit_burst, settings.rate_limit_max_clients
    )


def app_factory() -> FastAPI:
    """The app of one worker process, with settings read in that process (uvicorn ``factory=True``)."""
    from gateway.app import create_app  # gateway.app imports this module for scrape_registry
    from gateway.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    LOGGER.info("worker %d starting", os.getpid())
    return create_app(settings)


def _fresh_multiproc_dir() -> tuple[pathlib.Path, bool]:
    """The multiprocess-metrics directory, emptied; True when this run created it (and removes it)."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = pathlib.Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        _clear(directory)
        return directory, False
    return pathlib.Path(tempfile.mkdtemp(prefix="gateway-metrics-")), True


def _clear(directory: pathlib.Path) -> None:
    for path in directory.glob("*.db"):  # stale samples of an earlier run would be added to this one's
        path.unlink(missing_ok=True)


# A dead worker's regions Triton still uses (its last requests) are retried once a supervisor tick (0.5 s).
_RELEASE_TRIES = 240


def release_regions(pid: int, triton_url: str, timeout_s: float = 1.0) -> tuple[list[str], list[str]]:
    """Unregister from Triton and unlink from ``/dev/shm`` the regions of the dead worker ``pid``.

    Returns the names released and those Triton could not unregister yet (a request the worker sent is
    still using the region; call again later), or all of them when Triton cannot be reached. Each Triton
    call waits at most ``timeout_s``: the supervisor's loop (worker health checks, signals) waits for it.
    """
    import tritonclient.grpc as grpcclient  # only a supervisor with shared memory needs it
    from tritonclient.utils import InferenceServerException

    prefix = region_prefix(pid)
    released: set[str] = set()
    pending: list[str] = []
    client = grpcclient.InferenceServerClient(triton_url)
    try:
        status = client.get_system_shared_memory_status(as_json=True, client_timeout=timeout_s)
        for name in status.get("regions", {}):
            if not name.startswith(prefix):
                continue
            try:
                client.unregister_system_shared_memory(name, client_timeout=timeout_s)
                released.add(name)
            except InferenceServerException as exc:
                LOGGER.info("worker %d's region %s not unregistered yet: %s", pid, name, exc.message())
                pending.append(name)
    except InferenceServerException as exc:
        LOGGER.warning("cannot read Triton's shared-memory regions for worker %d: %s", pid, exc.message())
        pending.append(f"{prefix}*")
    finally:
        client.close()
    # The names go now (Triton keeps its mapping of a region still in use until it is unregistered).
    for path in pathlib.Path("/dev/shm").glob(f"{prefix}*"):
        try:
            # By the key tritonclient opened it with (``/<name>``): multiprocessing's resource tracker (the
            # workers share the supervisor's) knows it by that, and forgets it on unlink(); by any other
            # name it would try to unlink it again at exit, and warn.
            segment = shared_memory.SharedMemory(name=f"/{path.name}")
        except FileNotFoundError:
            continue
        segment.close()
        segment.unlink()
        released.add(path.name)
    return sorted(released - set(pending)), pending


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor (it restarts a worker that died), which also cleans up after a dead
    worker: :func:`prometheus_client.multiprocess.mark_process_dead` (its live gauges) and, with shared
    memory, :func:`release_regions`.

    Args:
        config: uvicorn's configuration (``workers`` > 1).
        sockets: the listening sockets the workers share.
        settings: the gateway's settings (Triton's address, whether shared memory is used).
        metrics_dir: the multiprocess-metrics directory.
    """

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket], settings: Settings, metrics_dir: pathlib.Path
    ) -> None:
        super().__init__(config, sockets)
        self.settings = settings
        self.metrics_dir = metrics_dir
        self._regions_of_dead: dict[int, int] = {}  # dead worker -> tries to release its regions so far

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            if pid is not None:
                mark_process_dead(pid, str(self.metrics_dir))
                LOGGER.warning("worker %d died; its live gauges are dropped", pid)
                if self.settings.triton_shared_memory:
                    self._regions_of_dead[pid] = 0
        for pid in list(self._regions_of_dead):  # until Triton lets go of them (each half-second tick)
            self.release(pid)

    def release(self, pid: int) -> None:
        """Release the dead worker ``pid``'s shared-memory regions, or count one more try."""
        released, pending = release_regions(pid, self.settings.triton_url)
        tries = self._regions_of_dead[pid] = self._regions_of_dead[pid] + 1
        if released:
            LOGGER.warning("worker %d died; released its shared memory %s", pid, released)
        if not pending:
            del self._regions_of_dead[pid]
        elif tries >= _RELEASE_TRIES:
            LOGGER.error("worker %d's shared memory %s is still registered with Triton; giving up", pid, pending)
            del self._regions_of_dead[pid]


KEYS_FILE_ENV = "GATEWAY_API_KEYS_FILE"


def _snapshot_keys_file(settings: Settings) -> pathlib.Path | None:
    """A private copy (mode 0600) of ``api_keys_file`` as it is now, for every worker to read, or None.

    Each worker reads its keys when it starts, and uvicorn starts a new worker whenever one dies: read
    from the original file, a rotated file gave the workers different keys (the same key 200 from one,
    401 from the other), and a removed or emptied one made every replacement fail at start-up, over and
    over. From the snapshot, the keys are those at the gateway's start for all workers, as documented
    ("read once at start-up"). Raises like :func:`~gateway.auth.load_api_keys` (here, once).
    """
    from gateway.auth import load_api_keys

    if settings.api_keys_file is None:
        return None
    text = pathlib.Path(settings.api_keys_file).read_text()
    handle, name = tempfile.mkstemp(prefix="gateway-keys-")
    snapshot = pathlib.Path(name)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    try:
        load_api_keys(settings.model_copy(update={"api_keys_file": snapshot}))  # no key: stop here
    except ValueError as exc:
        snapshot.unlink()
        raise ValueError(f"{KEYS_FILE_ENV} {settings.api_keys_file} holds no API key") from exc
    return snapshot


def serve_workers(settings: Settings) -> None:
    """Serve ``settings.workers`` worker processes on ``settings.host:settings.port`` until stopped."""
    keys_snapshot = _snapshot_keys_file(settings)
    if keys_snapshot is not None:
        os.environ[KEYS_FILE_ENV] = str(keys_snapshot)  # before any worker starts (and over a .env file)
    directory, created = _fresh_multiproc_dir()
    # Before any worker starts (spawned: each imports prometheus_client afresh and sees it).
    os.environ[MULTIPROC_ENV] = str(directory)
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    table = directory / "rate-limit.table"
    if settings.rate_limit_per_s > 0:  # one limit for the gateway, whichever worker a connection reaches
        SharedTokenBuckets.create(table, settings.rate_limit_max_clients)
        os.environ[RATE_LIMIT_TABLE_ENV] = str(table)
    LOGGER.info("starting %d gateway workers; metrics aggregated in %s", settings.workers, directory)
    try:
        if settings.metrics_port is not None:  # the workers' apps then have no /metrics route
            start_http_server(settings.metrics_port, settings.host, registry=scrape_registry(CollectorRegistry()))
        # The same protocol and limits as one process (gateway.server); per-process limits
        # (max_inflight, max_body_reads, max_buffered_body_bytes) apply to each worker, the rate limit to all.
        # uvicorn.run(..., workers=N), with the supervisor that also cleans up after a killed worker.
        config = uvicorn.Config(
            "gateway.workers:app_factory", factory=True, workers=settings.workers, **uvicorn_options(settings)
        )
        sock = config.bind_socket()
        try:
            Supervisor(config, [sock], settings, directory).run()
        finally:
            sock.close()
    finally:
        table.unlink(missing_ok=True)
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            _clear(directory)
        if keys_snapshot is not None:
            keys_snapshot.unlink(missing_ok=True)
