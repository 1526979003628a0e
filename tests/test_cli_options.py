"""Every flag of ``onnx-xai explain`` reaches every method class that takes it; ``--option``
keys a method does not take, and values it refuses, are bad arguments (exit 2) named in one
line; ``--mean`` / ``--std`` must match the model's channels."""
from __future__ import annotations

import inspect
import json

import numpy as np
import onnx
import pytest

from onnx_xai import cli_methods
from onnx_xai.cli import main
from conftest import conv_classifier

# flag value given on the command line, and the class arguments it may land in
FLAGS = {"--batch": (3, ("n_batch", "batch_size", "mini_batch_size", "internal_batch_size")),
         "--mask-size": (4, ("mask_size",)), "--overlap": (0.25, ("overlap",)),
         "--stride": (2, ("stride",)), "--n-masks": (7, ("n_masks",)),
         "--samples": (5, ("n_samples",)), "--steps": (6, ("n_steps",)), "--seed": (9, ("seed",))}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small conv classifier ``(B, 3, 8, 8) → (B, 4)`` and one input array."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("cli_options")
    onnx.save(conv_classifier(), folder / "m.onnx")
    np.save(folder / "x.npy", rng.normal(size=(3, 8, 8)).astype(np.float32))
    return folder / "m.onnx", folder / "x.npy"


@pytest.mark.parametrize("name", [m for m in cli_methods.available()
                                  if cli_methods.get(m).kind not in ("token", "attention")])  # (test_rollout)
def test_every_flag_reaches_the_method(name, files, tmp_path):
    method = cli_methods.get(name)
    args = [str(files[0]), str(files[1]), "--method", name, "--out", str(tmp_path), "--quiet"]
    for flag, (value, _) in FLAGS.items():
        args += [flag, str(value)]
    assert main(["explain"] + args) == 0
    used = json.loads((tmp_path / f"x_npy_{name}.json").read_text())["parameters"]
    takes = inspect.signature(method.impl).parameters
    reached = 0
    for flag, (value, arguments) in FLAGS.items():
        for arg in arguments:
            if arg in takes:  # the class takes it: the flag must land there (never dropped)
                assert used.get(arg) == value, f"{flag} did not reach {method.impl.__name__}({arg}=...)"
                reached += 1
    assert reached >= 1  # every method takes at least --batch
    for arg in method.flags.values():  # and the registry names only real arguments
        assert arg in takes, f"{name}: flag argument {arg!r} is not a parameter of {method.impl.__name__}"


@pytest.mark.parametrize("option,words", [
    ("n_maskz=3", ["--option n_maskz", "n_masks", "cell_size", "p1"]),
    ("seeed=1", ["--option seeed", "seed"]),
    ("p1=notjson", ["--option p1='notjson'", "p1 must be"]),
    ("p1=2", ["--option p1=2", "p1 must be"]),
])
def test_bad_options_are_bad_arguments(option, words, files, tmp_path, capsys):
    code = main(["explain", str(files[0]), str(files[1]), "--method", "rise", "--option", option,
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    for w in words:
        assert w in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_option_keys_checked_for_every_method(files, tmp_path, capsys):
    code = main(["explain", str(files[0]), str(files[1]), "--method", "occlusion,scorecam",
                 "--option", "mode=gaussian", "--out", str(tmp_path), "--quiet"])
    assert code == 2  # occlusion takes mode, ScoreCAM does not
    assert "'scorecam'" in capsys.readouterr().err


def test_mean_and_std_must_match_the_channels(files, tmp_path, capsys):
    image = tmp_path / "im.png"
    from onnx_xai.visualize import write_png
    write_png(image, np.zeros((8, 8, 3), np.uint8))
    for flag in ("--mean", "--std"):
        code = main(["explain", str(files[0]), str(image), "--method", "occlusion", flag, "0.5,0.5",
                     "--out", str(tmp_path / "out"), "--quiet"])
        assert code == 2
        assert f"{flag} has 2 values but the model's input has 3 channels" in capsys.readouterr().err
    assert main(["explain", str(files[0]), str(image), "--method", "occlusion", "--mean", "0.5",
                 "--mask-size", "4", "--out", str(tmp_path / "out"), "--quiet"]) == 0
