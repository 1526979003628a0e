"""Disk cache of gradient models: checksums and keys verified on load, LRU size cap, stale
temporary files, read-only directories and ``onnx-xai cache info|clear``."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_xai import Model
from onnx_xai.autodiff import cache, gradient_model, portable
from onnx_xai.cli import main
from onnx_xai.methods.cam import GradCAM

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("ONNX_XAI_CACHE", str(d))
    monkeypatch.delenv("ONNX_XAI_CACHE_SIZE", raising=False)
    return d


@pytest.fixture
def builds(monkeypatch):
    """Counts portable builds (a cache hit builds nothing)."""
    calls = []
    real = portable.build

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(portable, "build", counting)
    return calls


def _x(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _torch_grad(net, x, cls):
    xt = torch.tensor(x, requires_grad=True)
    net(xt).gather(1, torch.as_tensor(cls)[:, None]).sum().backward()
    return xt.grad.numpy()


def _only_entry(d, suffix=".onnx"):
    files = sorted(d.glob(f"grad-*{suffix}"))
    assert len(files) == 1, files
    return files[0]


def _tamper(path):
    """Scale the first conv's weights: still valid ONNX, different gradients."""
    proto = onnx.load_from_string(path.read_bytes())
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    init = next(i for i in proto.graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * -3.0, init.name))
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


# ----------------------------------------------------------------------------- integrity
def test_tampered_entry_is_rebuilt_not_used(tiny_cnn, cache_dir, builds, caplog):
    net, data = tiny_cnn
    x, cls = _x(), [1, 3]
    first = gradient_model(Model(data), batch_size=2, backend="portable").run(x, cls)
    cam = GradCAM(Model(data), "3")(x, class_idx=cls)
    assert len(builds) == 2
    entries = sorted(cache_dir.glob("grad-*.onnx"))
    assert len(entries) == 2 and len(list(cache_dir.glob("grad-*.json"))) == 2
    originals = {p: p.read_bytes() for p in entries}
    for p in entries:
        _tamper(p)
    with caplog.at_level(logging.WARNING, logger="onnx_xai"):
        again = gradient_model(Model(data), batch_size=2, backend="portable").run(x, cls)
        cam_again = GradCAM(Model(data), "3")(x, class_idx=cls)
    assert len(builds) == 4  # both rebuilt
    assert sum("sha256" in r.getMessage() for r in caplog.records) == 2
    np.testing.assert_array_equal(again["gradients"]["x"], first["gradients"]["x"])
    np.testing.assert_array_equal(cam_again, cam)
    ref = _torch_grad(net, x, cls)
    np.testing.assert_allclose(again["gradients"]["x"], ref, atol=1e-5 * np.abs(ref).max())
    for p, data_ in originals.items():  # the rebuilt entries replaced the tampered ones
        assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(data_).digest()
    gradient_model(Model(data), batch_size=2, backend="portable")
    assert len(builds) == 4  # and are hits again


@pytest.mark.parametrize("how", ["model and sidecar", "model only", "forged sidecar"])
def test_entry_under_a_wrong_key_is_a_miss_and_removed(tiny_cnn, cache_dir, builds, how, caplog):
    data = tiny_cnn[1]
    x, cls = _x(), [0, 4]
    gradient_model(Model(data), batch_size=2, backend="portable")  # key A: w.r.t. the input
    a = _only_entry(cache_dir)
    want = gradient_model(Model(data), ["x", "3"], batch_size=2, backend="portable").run(x, cls)
    b = next(p for p in cache_dir.glob("grad-*.onnx") if p != a)  # key B: input and layer
    b.write_bytes(a.read_bytes())  # a valid model, built for another key
    if how == "model and sidecar":
        b.with_suffix(".json").write_bytes(a.with_suffix(".json").read_bytes())
    elif how == "model only":
        b.with_suffix(".json").unlink()
    else:  # a sidecar naming B with the right checksum: the key inside the model still says A
        raw = b.read_bytes()
        b.with_suffix(".json").write_text(json.dumps({
            "key": b.stem[5:], "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw),
            "created": time.time()}))
    assert cache.load(b.stem[5:]) is None  # a miss...
    assert not b.exists() and not b.with_suffix(".json").exists()  # ...and the entry is gone
    assert any("removing" in r.getMessage() for r in caplog.records)
    b.write_bytes(a.read_bytes())  # once more, through gradient_model (no KeyError)
    b.with_suffix(".json").write_bytes(a.with_suffix(".json").read_bytes())
    n = len(builds)
    got = gradient_model(Model(data), ["x", "3"], batch_size=2, backend="portable").run(x, cls)
    assert len(builds) == n + 1
    for kind in ("gradients", "activations"):
        for name in want[kind]:
            np.testing.assert_array_equal(got[kind][name], want[kind][name])
    assert cache.load(b.stem[5:]) is not None  # rebuilt and stored under its own key


def test_corrupt_or_half_entries_are_misses(tiny_cnn, cache_dir, builds):
    data = tiny_cnn[1]
    gradient_model(Model(data), batch_size=2, backend="portable")
    p = _only_entry(cache_dir)
    digest = p.stem[5:]
    assert cache.load(digest) is not None
    p.with_suffix(".json").write_text("{not json")
    assert cache.load(digest) is None and not p.exists()
    gradient_model(Model(data), batch_size=2, backend="portable")
    p.write_bytes(p.read_bytes()[:-10])  # truncated
    assert cache.load(digest) is None and not p.exists()
    assert cache.load("0" * 40) is None  # plain miss


# ----------------------------------------------------------------------------- temporary files
def test_stale_temporary_files_are_removed_on_store(tiny_cnn, cache_dir):
    cache_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = cache._host()
    old, minutes = time.time() - 2 * cache.STALE_SECONDS, time.time() - 2 * cache.DEAD_WRITER_SECONDS
    files = {  # name: (mtime, removed?)
        ".grad-abc123.tmp": (old, True),                       # pre-pid name, hours old
        ".grad-xyz789.tmp": (time.time(), False),              # unknown writer, fresh
        f".grad-{dead.pid}@{host}-q1.tmp": (minutes, True),    # its writer is gone
        f".grad-{dead.pid}@{host}-q2.tmp": (time.time(), False),  # ... but give it a minute
        f".grad-{os.getpid()}@{host}-q3.tmp": (minutes, False),   # a live writer
        f".grad-{dead.pid}@00000000-q4.tmp": (minutes, False),    # another host's writer
        f".grad-{os.getpid()}@{host}-q5.tmp": (old, True),        # live pid, but hours old
        f"grad-{'e' * 40}.json": (old, True),                  # a sidecar without its model
    }
    for name, (mtime, _) in files.items():
        (cache_dir / name).write_bytes(b"x" * 100)
        os.utime(cache_dir / name, (mtime, mtime))
    gradient_model(Model(tiny_cnn[1]), batch_size=2, backend="portable")
    for name, (_, removed) in files.items():
        assert (cache_dir / name).exists() != removed, name
    out = main(["cache", "info"])
    assert out == 0


def test_store_writes_no_temporary_files_and_a_matching_sidecar(tiny_cnn, cache_dir):
    gradient_model(Model(tiny_cnn[1]), batch_size=2, backend="portable")
    p = _only_entry(cache_dir)
    meta = json.loads(p.with_suffix(".json").read_text())
    raw = p.read_bytes()
    assert meta["key"] == p.stem[5:] and meta["size"] == len(raw)
    assert meta["sha256"] == hashlib.sha256(raw).hexdigest()
    assert not list(cache_dir.glob(".*.tmp"))


# ----------------------------------------------------------------------------- size cap
def _proto(n_bytes: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.zeros(n_bytes // 4, np.float32), "w")
    g = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w])
    return helper.make_model(g)


@pytest.mark.parametrize("text,want", [("123", 123), ("2GB", 2 * 10**9), ("500 MB", 5 * 10**8),
                                       ("1.5GiB", int(1.5 * 2**30)), ("64k", 64000), ("0", 0)])
def test_parse_size(text, want):
    assert cache.parse_size(text) == want


def test_size_cap_from_the_environment(monkeypatch, caplog):
    assert cache.size_cap() == cache.DEFAULT_SIZE == 2 * 10**9
    monkeypatch.setenv("ONNX_XAI_CACHE_SIZE", "300MB")
    assert cache.size_cap() == 3 * 10**8
    with pytest.raises(ValueError, match="500MB"):
        cache.parse_size("lots")
    monkeypatch.setenv("ONNX_XAI_CACHE_SIZE", "lots")
    assert cache.size_cap() == cache.DEFAULT_SIZE
    assert "ONNX_XAI_CACHE_SIZE" in caplog.text


def test_least_recently_used_entries_are_evicted_first(cache_dir, monkeypatch):
    keys = [c * 40 for c in "abcd"]
    for i, k in enumerate(keys[:3]):
        cache.store(k, _proto(4000))
        t = time.time() - 1000 + 100 * i  # a oldest, c newest
        for p in cache_dir.glob(f"grad-{k}.*"):
            os.utime(p, (t, t))
    one = cache.entries()[0].size
    assert [e.key for e in cache.entries()] == keys[:3]
    assert cache.load(keys[0]) is not None  # a use: a is now the most recent
    assert [e.key for e in cache.entries()] == [keys[1], keys[2], keys[0]]
    # a few bytes of slack: the sidecar's "created" time is a float whose repr varies in length
    monkeypatch.setenv("ONNX_XAI_CACHE_SIZE", str(3 * one + 64))
    cache.store(keys[3], _proto(4000))  # four entries over a cap of three: b goes
    assert {e.key for e in cache.entries()} == {keys[0], keys[2], keys[3]}
    monkeypatch.setenv("ONNX_XAI_CACHE_SIZE", str(one + one // 2))
    cache.store(keys[1], _proto(4000))  # the new entry stays, all older ones go
    assert [e.key for e in cache.entries()] == [keys[1]]
    monkeypatch.setenv("ONNX_XAI_CACHE_SIZE", str(one // 2))
    cache.store(keys[2], _proto(4000))  # larger than the cap: not stored, nothing evicted
    assert [e.key for e in cache.entries()] == [keys[1]]
    monkeypatch.setenv("ONNX_XAI_CACHE_SIZE", "0")
    cache.store(keys[2], _proto(4000))
    assert [e.key for e in cache.entries()] == [keys[1]]


def test_cap_bounds_the_cache_across_gradient_models(tiny_cnn, cache_dir, monkeypatch):
    data = tiny_cnn[1]
    gradient_model(Model(data), batch_size=2, backend="portable")
    one = cache.entries()[0].size
    monkeypatch.setenv("ONNX_XAI_CACHE_SIZE", str(int(one * 2.5)))
    for b in (1, 3, 4):  # other batch sizes: other keys
        gradient_model(Model(data), batch_size=b, backend="portable")
    listed = cache.entries()
    assert len(listed) == 2 and sum(e.size for e in listed) <= one * 2.5


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="needs POSIX permissions that apply to this user")
def test_read_only_cache_is_silently_skipped(tiny_cnn, cache_dir, builds, capsys):
    data = tiny_cnn[1]
    gradient_model(Model(data), batch_size=2, backend="portable")
    cache_dir.chmod(0o555)
    try:
        gradient_model(Model(data), batch_size=2, backend="portable")  # a hit
        gradient_model(Model(data), batch_size=3, backend="portable")  # a miss: not stored
        assert len(builds) == 2 and len(cache.entries()) == 1
        assert main(["cache", "clear"]) == 1
        assert "could not remove 1" in capsys.readouterr().err
    finally:
        cache_dir.chmod(0o755)


def test_unwritable_cache_is_silently_skipped(tiny_cnn, cache_dir, builds, monkeypatch, capsys):
    """The same as root can run it: every write into the directory fails."""
    data = tiny_cnn[1]
    gradient_model(Model(data), batch_size=2, backend="portable")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    for name in ("mkstemp",):
        monkeypatch.setattr(cache.tempfile, name, denied)
    monkeypatch.setattr(cache.os, "utime", denied)
    monkeypatch.setattr(cache.Path, "unlink", denied)
    gradient_model(Model(data), batch_size=2, backend="portable")  # a hit (times not touched)
    gradient_model(Model(data), batch_size=3, backend="portable")  # a miss, not stored
    assert len(builds) == 2 and len(cache.entries()) == 1
    _tamper(_only_entry(cache_dir))  # a bad entry that cannot be removed is still not used
    gradient_model(Model(data), batch_size=2, backend="portable")
    assert len(builds) == 3
    assert main(["cache", "clear"]) == 1
    assert "could not remove 1 entries" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CLI
def test_cli_cache_info_and_clear(tiny_cnn, cache_dir, capsys, monkeypatch):
    assert main(["cache", "info"]) == 0  # no directory yet
    out = capsys.readouterr().out
    assert f"directory: {cache_dir}" in out and "entries:   0" in out and "2.0 GB" in out
    gradient_model(Model(tiny_cnn[1]), batch_size=2, backend="portable")
    size = cache.entries()[0].size
    monkeypatch.setenv("ONNX_XAI_CACHE_SIZE", "1.5GiB")
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "entries:   1" in out and f"({size} bytes)" in out and f"({int(1.5 * 2**30)} bytes" in out
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 1 entries") and str(cache_dir) in out
    assert not list(cache_dir.glob("grad-*"))
    assert main(["cache", "info"]) == 0 and "entries:   0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["cache", "purge"])
    assert exc.value.code == 2
