"""Regions left behind by gateway processes that died are swept; live ones never are.

Unit tier: :func:`claim_stale` and :func:`sweep_stale` on a temporary directory (locks taken by real
processes; Triton's unregistration through a labelled fake), and :class:`RegionSweeper`'s loop.
End to end: a real ``python -m gateway`` with shared memory on is SIGKILLed after /detect and
/classify made its regions; a new gateway's start-up sweep removes them from Triton and ``/dev/shm``
while a live gateway's regions stay and it keeps answering.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from gateway import Settings, create_app
from gateway.shared_memory import MIN_AGE_S, SHM_DIR, RegionSweeper, claim_stale, hold, sweep_stale
from tests.helpers import gateway_env, run_gateway
from triton_local import TritonServer


class FakeTriton:
    """A labelled fake of the one call the sweep makes (``unregister_system_shared_memory``)."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.unregistered: list[str] = []

    async def unregister_system_shared_memory(self, name: str, client_timeout: float) -> None:
        if self.refuse:
            raise InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
        self.unregistered.append(name)


def _region_file(directory: pathlib.Path, name: str) -> pathlib.Path:
    path = directory / name
    path.write_bytes(b"\0" * 64)
    return path


def _locked_by_a_process(directory: pathlib.Path, name: str) -> subprocess.Popen[bytes]:
    """A process that takes the region's live lock as a gateway does, then waits."""
    code = (
        "import pathlib, sys, time\n"
        "from gateway.shared_memory import hold\n"
        f"assert hold({name!r}, pathlib.Path({str(directory)!r})) >= 0\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline().strip() == b"held"
    return process


def test_a_region_is_stale_once_its_owner_dies_however_it_dies(tmp_path: pathlib.Path) -> None:
    _region_file(tmp_path, "gw-1-a-0")
    owner = _locked_by_a_process(tmp_path, "gw-1-a-0")
    try:
        assert claim_stale(tmp_path, min_age_s=0) == []  # alive: its lock is held
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    claimed = claim_stale(tmp_path, min_age_s=0)
    try:
        assert [name for name, _ in claimed] == ["gw-1-a-0"]
        # Claimed: held exclusively, so a second sweeper (another worker) does not take it too.
        assert claim_stale(tmp_path, min_age_s=0) == []
    finally:
        for _, fd in claimed:
            os.close(fd)


def test_live_young_and_foreign_files_are_not_claimed(tmp_path: pathlib.Path) -> None:
    _region_file(tmp_path, "gw-2-live-0")
    _region_file(tmp_path, "gw-3-young-0")
    _region_file(tmp_path, "triton_local_x")  # not a gateway region
    fd = hold("gw-2-live-0", tmp_path)  # this process owns it (another descriptor of the same process too)
    try:
        claimed = claim_stale(tmp_path, min_age_s=0)
        assert [name for name, _ in claimed] == ["gw-3-young-0"]
        for _, claimed_fd in claimed:
            os.close(claimed_fd)
        assert claim_stale(tmp_path, min_age_s=60) == []  # just created: its creator may not hold it yet
    finally:
        os.close(fd)


def test_sweep_unregisters_and_unlinks_and_keeps_what_triton_cannot_unregister(tmp_path: pathlib.Path) -> None:
    dead = _region_file(tmp_path, "gw-4-dead-0")
    live = _region_file(tmp_path, "gw-5-live-0")
    fd = hold(live.name, tmp_path)
    try:
        down = FakeTriton(refuse=True)
        assert asyncio.run(sweep_stale(down, 1.0, tmp_path, min_age_s=0)) == []
        assert dead.exists()  # unlinking it would leave Triton's mapping with no name to unregister by
        up = FakeTriton()
        assert asyncio.run(sweep_stale(up, 1.0, tmp_path, min_age_s=0)) == ["gw-4-dead-0"]
        assert up.unregistered == ["gw-4-dead-0"]
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)


def test_sweeper_sweeps_at_start_then_every_interval_and_counts() -> None:
    counts: list[int] = []
    sweeps = iter([["a", "b"], [], ["c"]])

    async def sweep() -> list[str]:
        return next(sweeps, [])

    async def scenario() -> None:
        off = RegionSweeper(sweep, 0, counts.append)
        off.start()
        await asyncio.sleep(0.05)
        assert counts == []
        sweeper = RegionSweeper(sweep, 0.02, counts.append)
        sweeper.start()
        await asyncio.sleep(0.1)
        await sweeper.stop()

    asyncio.run(scenario())
    assert counts[:3] == [2, 0, 1]


# --- end to end ---------------------------------------------------------------------------------


def _registered(triton: TritonServer) -> set[str]:
    status = grpcclient.InferenceServerClient(triton.grpc_url).get_system_shared_memory_status(as_json=True)
    return set(status.get("regions", {}))


def _files(pid: int) -> set[str]:
    return {path.name for path in SHM_DIR.glob(f"gw-{pid}-*")}


def _resource_tracker(pid: int) -> int:
    """The multiprocessing resource tracker the gateway ``pid`` started (it unlinks a dead process's
    shared memory names; a whole container killed takes it down too)."""
    for child in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"resource_tracker" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"gateway {pid} has no resource tracker")


def test_regions_of_killed_gateways_are_swept_by_the_next_one_and_live_ones_kept(
    triton: TritonServer,
    model_repo: pathlib.Path,
    settings: Settings,
    chelsea_jpeg: bytes,
    tmp_path: pathlib.Path,
) -> None:
    files = {"file": ("c.jpg", chelsea_jpeg, "image/jpeg")}
    env = gateway_env(triton.grpc_url, model_repo, triton_shared_memory=True, health_probe_interval_s=0)
    live_settings = settings.model_copy(update={"triton_shared_memory": True, "triton_shared_memory_sweep_s": 0})
    with TestClient(create_app(live_settings)) as live:
        expected = live.post("/classify", files=files)
        assert expected.status_code == 200, expected.text
        live_regions = _files(os.getpid())
        assert live_regions and live_regions <= _registered(triton)

        # Two gateways die by SIGKILL after /classify and /detect made their regions: the first alone
        # (its resource tracker survives it and unlinks the names; Triton still maps the regions), the
        # second with its resource tracker, as when a whole container is killed (the names stay too).
        dead: dict[int, set[str]] = {}
        for i, with_tracker in enumerate((False, True)):
            with run_gateway(env, tmp_path / f"dead-{i}.log") as gateway:
                for path in ("/classify", "/detect"):
                    assert httpx.post(f"{gateway.url}{path}", files=files, timeout=60).status_code == 200
                dead[gateway.pid] = _files(gateway.pid)
                assert len(dead[gateway.pid]) == 2 and dead[gateway.pid] <= _registered(triton)
                if with_tracker:
                    os.kill(_resource_tracker(gateway.pid), signal.SIGKILL)
                os.kill(gateway.pid, signal.SIGKILL)
                time.sleep(0.5)
        created = time.time()
        left = set().union(*dead.values())
        assert left <= _registered(triton)
        (first, _), (second, names_kept) = dead.items()
        assert not _files(first) and _files(second) == names_kept

        time.sleep(max(0.0, created + MIN_AGE_S - time.time()))
        with run_gateway({**env, "GATEWAY_TRITON_SHARED_MEMORY_SWEEP_S": "0.5"}, tmp_path / "next.log") as following:
            # Its start-up sweep takes the names no one holds; Triton's regions without a name only once it
            # has registered one of its own (proof that it sees Triton's /dev/shm): after a request.
            assert httpx.post(f"{following.url}/classify", files=files, timeout=60).status_code == 200
            deadline = time.monotonic() + 30
            while _files(second) or left & _registered(triton):
                assert time.monotonic() < deadline, (_files(second), left & _registered(triton))
                time.sleep(0.2)
            metrics = httpx.get(f"{following.url}/metrics", timeout=10).text
            swept = re.search(r"^gateway_shared_memory_swept_total (\S+)$", metrics, re.MULTILINE)
            assert swept is not None and float(swept.group(1)) >= 4, metrics

        # The live gateway's regions were never touched, and it answers through them as before.
        assert live_regions == _files(os.getpid()) and live_regions <= _registered(triton)
        again = live.post("/classify", files=files)
        assert again.status_code == 200 and again.json() == expected.json()


@pytest.mark.parametrize("interval", ["-1"])
def test_a_negative_sweep_interval_is_refused(interval: str) -> None:
    with pytest.raises(ValueError):
        Settings(triton_shared_memory_sweep_s=float(interval), _env_file=None)  # type: ignore[call-arg]
