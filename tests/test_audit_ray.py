"""``onnx-xai audit --engine ray`` on a real local Ray cluster (``ray.init(num_cpus=2)`` in this
process; the CLI subprocess joins it with ``--ray-address``): the same per-input files as the
local engine, every input done exactly once after a worker actor is SIGKILLed mid-run, and a
killed driver resumed by the next run."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from onnx_xai import cli  # noqa: E402
from onnx_xai.engines.ray_audit import RayOptions, actor_count  # noqa: E402
from test_audit import SHAPES, shapes_png  # noqa: E402

N = 40
METHODS = ["occlusion", "gradcam"]
CLI_ARGS = ["--methods", ",".join(METHODS), "--mask-size", "16", "--overlap", "0.5", "--metric-steps", "4",
            "--threads", "1"]  # every run: the same settings, so the same markers' signature
FILES = {"done.json", "input.png"} | {f"{m}.{ext}" for m in METHODS for ext in ("png", "npy", "json")}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs, owned by this process → its address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray") / "in"
    shapes_png(folder, N, seed=5)
    return folder


@pytest.fixture(scope="module")
def local(images) -> Path:
    """The local engine's audit of the images: the reference."""
    out = images.parent / "local"
    assert cli.main(["audit", str(SHAPES), str(images), *CLI_ARGS, "--out", str(out), "--quiet"]) == 0
    return out


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in ("timings", "cached")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def same_outputs(out: Path, reference: Path) -> None:
    """Every input done exactly once, with the reference's files: maps and pictures equal, JSON equal
    apart from timings; no temp files."""
    dirs = sorted(p.name for p in (out / "inputs").iterdir())
    assert dirs == sorted(p.name for p in (reference / "inputs").iterdir()) and len(dirs) == N
    assert not list(out.rglob("*.tmp")), "temp files left behind"
    for key in dirs:
        ours, theirs = out / "inputs" / key, reference / "inputs" / key
        assert {p.name for p in ours.iterdir()} == FILES
        for name in sorted(FILES):
            if name.endswith(".json"):
                assert without_timings(json.loads((ours / name).read_text())) == \
                    without_timings(json.loads((theirs / name).read_text())), f"{key}/{name}"
            elif name.endswith(".npy"):
                a, b = np.load(ours / name), np.load(theirs / name)
                assert a.shape == b.shape and np.array_equal(a, b), f"{key}/{name}"
            else:
                assert (ours / name).read_bytes() == (theirs / name).read_bytes(), f"{key}/{name}"
    summary = json.loads((out / "summary.json").read_text())
    keys = [rec["key"] for rec in summary["inputs"]]
    assert sorted(keys) == dirs and len(set(keys)) == N and summary["n_failed"] == 0
    expected = {r["key"]: r for r in json.loads((reference / "summary.json").read_text())["inputs"]}
    for rec in summary["inputs"]:
        assert without_timings(rec) == without_timings(expected[rec["key"]])


def _descendants(pid: int) -> dict[int, str]:
    """Live descendants of ``pid`` → their command lines (from /proc)."""
    parent, cmd = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            line = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parent[int(stat.parent.name)], cmd[int(stat.parent.name)] = int(fields[1]), line
    found, frontier = {}, [pid]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found[child] = cmd[child]
                frontier.append(child)
    return found


def map_workers(busy: bool = False) -> list[int]:
    """The pids of this cluster's audit actors (Ray titles them ``ray::MapWorker(MapBatches(AuditActor))``,
    with ``.submit`` while they explain a batch: ``busy``)."""
    mark = "(AuditActor)).submit" if busy else "(AuditActor))"
    return sorted(p for p, line in _descendants(os.getpid()).items() if mark in line)


def wait_until(condition, timeout: float = 120.0, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's workers in /proc")


def test_ray_engine_writes_what_the_local_engine_writes(cluster, images, local, capsys):
    out = images.parent / "ray_cli"
    code = cli.main(["audit", str(SHAPES), str(images), *CLI_ARGS, "--out", str(out), "--engine", "ray",
                     "--ray-batch", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{N} inputs (0 already done, 0 failed)" in captured.out
    assert "note: ray: 2 actors × 1 CPU, batches of 3" in captured.err.splitlines()
    same_outputs(out, local)
    assert json.loads((out / "summary.json").read_text())["engine"] == "ray"


def test_killed_worker_actor_every_input_done_exactly_once(cluster, images, local, capsys):
    out = images.parent / "ray_kill_actor"
    killed: dict = {}
    stop = threading.Event()

    def kill_one_actor() -> None:  # while the audit runs in this process's main thread
        if wait_until(lambda: stop.is_set() or (map_workers(busy=True) and list(out.glob("inputs/*/done.json")))) \
                and not stop.is_set():
            killed["pid"] = map_workers(busy=True)[0]
            os.kill(killed["pid"], signal.SIGKILL)
            killed["done"] = len(list(out.glob("inputs/*/done.json")))

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    code = cli.main(["audit", str(SHAPES), str(images), *CLI_ARGS, "--out", str(out), "--engine", "ray",
                     "--ray-actors", "2", "--quiet"])
    stop.set()
    killer.join()
    captured = capsys.readouterr()
    assert "pid" in killed, f"no busy actor was seen: {_descendants(os.getpid())}"
    assert killed["done"] < N, "kill an actor while inputs are left"
    assert code == 0, captured.err
    assert f"{N} inputs (0 already done, 0 failed)" in captured.out
    assert killed["pid"] not in map_workers()
    same_outputs(out, local)


def test_killed_driver_is_resumed_by_the_next_run(cluster, images, local, capsys):
    out = images.parent / "ray_kill_driver"
    args = ["audit", str(SHAPES), str(images), *CLI_ARGS, "--out", str(out), "--engine", "ray"]
    proc = subprocess.Popen([sys.executable, "-m", "onnx_xai.cli", *args, "--quiet", "--ray-address", cluster],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = wait_until(lambda: proc.poll() is not None or list(out.glob("inputs/*/done.json")), poll=0.01)
        assert started and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Ray ends the dead driver's job and its actors; only then is what is done final
    assert wait_until(lambda: not map_workers(), timeout=60, poll=0.2), "the dead driver's actors still run"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("inputs/*/done.json")}
    assert 0 < len(finished) < N
    code = cli.main([*args, "--ray-address", cluster])  # this process is connected: it keeps that connection
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{N} inputs ({len(finished)} already done, 0 failed)" in captured.out
    for key, mtime in finished.items():  # not recomputed
        assert (out / "inputs" / key / "done.json").stat().st_mtime_ns == mtime
    same_outputs(out, local)


def test_actor_count_fills_the_cluster():
    assert actor_count(RayOptions(), {"CPU": 8.0}, 100) == 8
    assert actor_count(RayOptions(cpus_per_actor=3), {"CPU": 8.0}, 100) == 2
    assert actor_count(RayOptions(), {"CPU": 8.0}, 5) == 5
    assert actor_count(RayOptions(cpus_per_actor=1, gpus_per_actor=0.5), {"CPU": 16.0, "GPU": 2.0}, 100) == 4
    assert actor_count(RayOptions(actors=3), {"CPU": 1.0}, 100) == 3
    with pytest.raises(ValueError, match="cpus_per_actor"):
        RayOptions(cpus_per_actor=-1)
    with pytest.raises(ValueError, match="batch_size"):
        RayOptions(batch_size=0)
