"""``onnx-xai`` command line: ``demo``, ``explain``, ``layers``, ``audit``, ``export``.

Exit codes: 0 success, 1 some inputs failed (listed; the rest is written), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import traceback
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import assets, cli_dense, cli_methods, graph, tokens
from .audit import (Config, Explainer, OutputError, RunOptions, audit_folder, check_output_file, collect_inputs,
                    input_keys, prepare_output_folder, run_audit, write_file)
from .errors import OnnxXaiError, one_line
from .preprocess import read_sidecar
from .report import write_report
from .runtime import Model
from .visualize import write_png


# ---------------------------------------------------------------------- argument helpers
def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    vals = _floats(text)
    if len(vals) not in (1, 2) or any(v < 1 or v != int(v) for v in vals):
        raise argparse.ArgumentTypeError(f"--size takes H,W or one size, got {text!r}")
    return (int(vals[0]), int(vals[-1]))


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _extra(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {text!r}")
    return name, path


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("running")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    g.add_argument("--threads", type=_positive, default=None, help="ONNX Runtime threads (default: all cores)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


def _explaining(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("explaining")
    g.add_argument("--target", default="auto", help="class index or label to explain (default: the top class)")
    g.add_argument("--layer", default=None, help="target layer of CAM methods (see `onnx-xai layers`)")
    g.add_argument("--batch", type=_positive, default=None, help="perturbed inputs per inference run")
    g.add_argument("--mask-size", type=_positive, default=None, help="occlusion window size")
    g.add_argument("--overlap", type=float, default=None, help="occlusion window overlap in [0, 1)")
    g.add_argument("--stride", type=_positive, default=None, help="matlab-occlusion stride")
    g.add_argument("--n-masks", type=_positive, default=None, help="RISE masks")
    g.add_argument("--samples", type=_positive, default=None, help="SmoothGrad samples")
    g.add_argument("--steps", type=_positive, default=None, help="integrated-gradients steps")
    g.add_argument("--seed", type=int, default=None, help="seed of random methods")
    g.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="any other argument of the method's class (JSON value), repeatable")
    g = p.add_argument_group("preprocessing (default: the model's JSON sidecar)")
    g.add_argument("--size", type=_size, default=None, help="resize images to H,W")
    g.add_argument("--mean", type=_floats, default=None, help="per-channel mean, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=_floats, default=None, help="per-channel std")
    g.add_argument("--scale", type=float, default=None, help="pixel scale before mean/std (default 1/255)")
    g.add_argument("--layout", choices=["nchw", "nhwc"], default=None,
                   help="the model input's layout (default: the sidecar's, else guessed from its shape)")
    g.add_argument("--extra", type=_extra, action="append", default=[], metavar="NAME=FILE.npy",
                   help="another input of the model: one sample's array (or a batch of 1) for every "
                        "input, or one row per input in the order given (repeatable)")
    g.add_argument("--labels", default=None, help="class names, one per line")


def _config(args: argparse.Namespace, methods: list[str], metric_steps: int) -> Config:
    options = {k: getattr(args, k) for k in ("layer", "batch", "mask_size", "overlap", "stride", "n_masks",
                                             "samples", "steps", "seed")}
    options["extra"] = dict(args.option)
    options["extra_inputs"] = dict(getattr(args, "extra", None) or [])
    prep = {k: getattr(args, k) for k in ("size", "mean", "std", "scale", "layout", "labels")}
    return Config(model=str(args.model), methods=methods, options=options, target=args.target,
                  device=args.device, threads=args.threads, prep=prep, metric_steps=metric_steps,
                  verbose=not args.quiet, debug=args.debug)


def _check_model(args: argparse.Namespace, methods: list[str]) -> None:
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"no ONNX model at {str(args.model)!r}")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    if methods == ["embedded"]:
        return
    token = [m for m in methods if cli_methods.get(m).kind == "token"]
    if token:
        raise ValueError(f"{', '.join(token)}: token methods explain text; give --text \"...\" (a "
                         "tokenizer.json beside the model), not input files")
    model = Model(args.model, device="cpu", verbose=False, layout=args.layout or "auto")
    if args.layer and any(cli_methods.get(m).kind == "cam" for m in methods):
        graph.resolve_layer(model.require_proto("resolving --layer"), args.layer)
    cli_methods.check_options(methods, _config(args, methods, 0).options, model, read_sidecar(args.model))


def _methods(args: argparse.Namespace, text: str | None) -> list[str]:
    """Methods to run: ``embedded`` for an exported explainer, else the checked list."""
    model = Model(args.model, device="cpu", verbose=False) if Path(args.model).is_file() else None
    if model is not None and "saliency" in model.output_names:
        if text and not args.quiet:
            print("note: the model has a 'saliency' output; running it instead of --method", file=sys.stderr)
        return ["embedded"]
    if not text:
        raise ValueError("--method is required; available: " + ", ".join(cli_methods.available()))
    return cli_methods.parse_methods(text)


def _report_failures(records: list[dict]) -> int:
    failed = [r for r in records if r.get("status") != "ok"]
    for r in failed:
        print(f"onnx-xai: {r['input']}: {r['error']}", file=sys.stderr)
        if r.get("traceback"):
            print(r["traceback"], file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------- commands
def cmd_explain(args: argparse.Namespace) -> int:
    """Explain each input with each method; files go to --out."""
    if args.text is not None:
        from .text import run_cli
        return run_cli(args, _config(args, [], 0).options)
    if not args.inputs:
        raise ValueError("give INPUT images / arrays / folders, or --text \"...\" for a text model")
    methods = _methods(args, args.method)
    _check_model(args, methods)
    out = Path(args.out)
    files = _inputs(args.inputs, out, args.quiet)
    if cli_dense.wanted(args):  # a segmentation region or a detection, not a class
        prepare_output_folder(out)
        return cli_dense.explain(args, methods, _config(args, methods, 0), files, out)
    explainer = Explainer(_config(args, methods, args.metric_steps))
    prepare_output_folder(out)
    records = []
    for item, (f, key) in enumerate(tqdm(list(zip(files, input_keys(files))), unit="input", desc="explain",
                                         disable=args.quiet or len(files) == 1)):
        try:
            rec = explainer.explain(f, out, prefix=f"{key}_", item=item)
        except OutputError:  # the output, not the input: stop with one line
            raise
        except Exception as exc:  # reported, the other inputs go on
            rec = {"input": str(f), "status": "error", "error": one_line(exc)}
            if args.debug:
                rec["traceback"] = traceback.format_exc()
        records.append(rec)
        if rec["status"] == "ok":
            t = rec["target"]
            files_out = ", ".join(str(out / m["files"]["png"]) for m in rec["methods"].values())
            print(f"{f}: {t['label']} ({t['index']}, {t['score']:.3f}) -> {files_out}")
    return _report_failures(records)


def cmd_layers(args: argparse.Namespace) -> int:
    """Print the candidate target layers as a table; * marks the automatic CAM layer, ``grid``
    how a token layer folds (class tokens + patch grid, see ``onnx_xai.tokens``)."""
    model = Model(args.model, device="cpu", verbose=False)
    layers = model.layers(args.shape)
    why = None
    try:
        default = cli_methods.default_layer(model, read_sidecar(args.model), args.shape)
    except ValueError as exc:
        default, why = None, one_line(exc)
    grids = _token_grids(model, args.shape, layers)
    rows = [("", "node", "op", "shape", "grid", "tensor")] + [
        ("*" if default in (l.node, l.tensor) else "", l.node, l.op_type,
         "?" if l.shape is None else "x".join("?" if s is None else str(s) for s in l.shape),
         grids.get(l.tensor, ""), l.tensor)
        for l in layers]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])
    shown = next((l.node for l in layers if default in (l.node, l.tensor)), default)
    print(f"\n{len(layers)} layers" + (f"; * = default CAM layer ({shown})" if default else ""))
    if why:
        print(f"no automatic CAM layer: {why}")
    return 0


def _token_grids(model: Model, shape: tuple | None, layers: list) -> dict[str, str]:
    """Tensor → how it folds to a channel-first grid, for the token layers among ``layers``."""
    per_sample = tuple(shape) if shape is not None else tuple(model.input.shape[1:])
    if not all(isinstance(s, int) for s in per_sample) or len(per_sample) != 3:
        return {}
    try:
        finder = tokens.GridFinder(model.require_proto("listing layers"), {model.input_name: (1,) + per_sample})
    except Exception:  # the listing is best effort: no grid column
        return {}
    folds = {l.tensor: finder.fold(l.tensor) for l in layers if l.shape is not None and len(l.shape) in (3, 4)}
    return {t: f.describe() for t, f in folds.items() if f is not None}


def _inputs(paths: list[str], out: Path, quiet: bool) -> list[Path]:
    """``collect_inputs`` without the files onnx-xai wrote there (``out``'s, older audits'), noted on stderr."""
    skipped: list[Path] = []
    files = collect_inputs(paths, exclude=out, skipped=skipped)
    if skipped and not quiet:
        print(f"note: skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} in the input folders that "
              f"onnx-xai wrote (output folder {str(out)!r} or an earlier one)", file=sys.stderr)
    return files


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def cmd_audit(args: argparse.Namespace) -> int:
    """Explain every input of the folders, resumably, and write the report."""
    methods = _methods(args, args.methods)
    _check_model(args, methods)
    config = _config(args, methods, 0 if args.no_metrics else args.metric_steps)
    run = RunOptions(workers=args.workers, resume=not args.fresh, progress=not args.quiet,
                     on_note=None if args.quiet else _note, engine=args.engine, ray=_ray_options(args))
    Explainer(config)  # fail early on a model or preprocessing problem
    result = audit_folder(config, args.folders, args.out, run, info={"model": str(args.model)})
    records = result.records
    cached = sum(bool(r.get("cached")) for r in records)
    failed = sum(r.get("status") != "ok" for r in records)
    print(f"{len(records)} inputs ({cached} already done, {failed} failed); report: {result.report['html']}")
    return _report_failures(records)


def _ray_options(args: argparse.Namespace):
    """``RayOptions`` from ``--ray-*`` (None for the local engine; ray itself is imported later)."""
    given = [f"--{k.replace('_', '-')}" for k, default in (("ray_address", None), ("ray_actors", None),
             ("ray_cpus", 1.0), ("ray_gpus", 0.0), ("ray_batch", 1)) if getattr(args, k) != default]
    if args.engine != "ray":
        if given:
            raise ValueError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} the Ray engine: "
                             f"add --engine ray")
        return None
    if args.workers != 1:
        raise ValueError("--workers is the local engine's; with --engine ray, --ray-actors sets the actors")
    from .engines.ray_audit import RayOptions, import_ray
    options = RayOptions(address=args.ray_address, actors=args.ray_actors, cpus_per_actor=args.ray_cpus,
                         gpus_per_actor=args.ray_gpus, batch_size=args.ray_batch)  # bad values: said first
    import_ray()  # not installed: one line saying what to install, before any work
    return options


def _demo_picture(records: list[dict], methods: list[str], out: Path) -> np.ndarray:
    """One row per photo: the input and each method's overlay, captioned."""
    rows = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        base = out / rec["dir"]
        names = [(rec["picture"], f"{rec['target']['label']} {rec['target']['score']:.2f}")]
        names += [(rec["methods"][m]["files"]["png"], m) for m in methods]
        tiles = []
        for file, caption in names:
            img = cv2.imread(str(base / file))  # an overlay keeps its colour bar: scale to height 224
            img = cv2.resize(img, (round(img.shape[1] * 224 / img.shape[0]), 224), interpolation=cv2.INTER_AREA)
            strip = np.full((26, img.shape[1], 3), 255, np.uint8)
            cv2.putText(strip, caption[:28], (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(np.vstack([img, strip]))
            tiles.append(np.full((250, 4, 3), 255, np.uint8))
        rows.append(np.hstack(tiles[:-1]))
    return cv2.cvtColor(np.vstack(rows), cv2.COLOR_BGR2RGB)


def cmd_demo(args: argparse.Namespace) -> int:
    """Top-5 labels, then explanations, for the example photos with the shipped model."""
    path = assets.efficientnet_lite0()
    methods = ["occlusion"] + [m for m in ("gradcam",) if m in cli_methods.available()]
    config = Config(model=str(path), methods=methods, options={"mask_size": 48, "overlap": 0.5},
                    device=args.device, threads=args.threads, metric_steps=10, verbose=False)
    out = Path(args.out)
    t0 = time.perf_counter()
    records = run_audit(config, assets.example_images(), out, RunOptions(resume=False, progress=not args.quiet))
    paths = write_report(out, records, methods, {"model": path.name, "created": datetime.datetime.now()
                                                 .isoformat(timespec="seconds")}, title="onnx-xai demo")
    if any(r.get("status") == "ok" for r in records):
        write_png(out / "demo.png", _demo_picture(records, methods, out))
    print(f"model: {path.name}; methods: {', '.join(methods)}")
    for rec in records:
        print(f"\n{Path(rec['input']).name}: top-5")
        for p in rec.get("prediction", []):
            print(f"  {p['index']:4d}  {p['score']:6.3f}  {p['label']}")
        for m, res in rec.get("methods", {}).items():
            print(f"  {m}: {res['timings']['method_s']:.2f} s, deletion AUC {res['deletion_auc']:.3f}, "
                  f"insertion AUC {res['insertion_auc']:.3f} -> {out / rec['dir'] / res['files']['png']}")
    print(f"\nreport: {paths['html'].resolve()}\npicture: {(out / 'demo.png').resolve()}"
          f"\noutputs in {out.resolve()} ({time.perf_counter() - t0:.1f} s)")
    return _report_failures(records)


def cmd_export(args: argparse.Namespace) -> int:
    """Write an explaining model (outputs + ``saliency``) next to nothing else, atomically."""
    from .export import export_explainer

    if not Path(args.model).is_file():
        raise FileNotFoundError(f"no ONNX model at {str(args.model)!r}")
    check_output_file(args.out)  # before the work: a bad -o is one line, at once
    proto = export_explainer(args.model, args.method, target_layers=args.layer,
                             class_idx=args.class_idx, upsample=not args.no_upsample,
                             normalize=not args.no_normalize, activation=args.activation,
                             layout=args.layout)
    path = write_file(args.out, proto.SerializeToString())
    sidecar = Path(args.model).with_suffix(".json")
    if sidecar.is_file():  # the same preprocessing for `onnx-xai explain` of the exported model
        write_file(Path(args.out).with_suffix(".json"), sidecar.read_bytes())
    print(f"{path}: outputs {[o.name for o in proto.graph.output]}, method {args.method}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``cache info``: directory, entries, total size and cap; ``cache clear``: remove them."""
    from .autodiff import cache

    if args.action == "info":
        i = cache.info()
        print(f"directory: {i['directory']}")
        print(f"entries:   {i['entries']}")
        print(f"size:      {cache.format_size(i['size'])} ({i['size']} bytes)")
        print(f"cap:       {cache.format_size(i['cap'])} ({i['cap']} bytes; ONNX_XAI_CACHE_SIZE)")
        if i["temp_files"]:
            print(f"temporary: {i['temp_files']} file(s) of running or killed writers")
        return 0
    r = cache.clear()
    print(f"removed {r['entries']} entries ({cache.format_size(r['size'])}) from {cache.cache_dir()}")
    if r["failed"]:
        print(f"onnx-xai: error: could not remove {r['failed']} entries (read-only?)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-xai", description="Explain ONNX models with ONNX Runtime.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"onnx-xai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    available = ", ".join(cli_methods.available())

    demo = sub.add_parser("demo", help="explain the example photos with the shipped EfficientNet-Lite0")
    demo.add_argument("--out", default="onnx-xai-demo", help="output folder (default: ./onnx-xai-demo)")
    _common(demo)
    demo.set_defaults(func=cmd_demo)

    explain = sub.add_parser("explain", help="explain images, .npy arrays or folders of them")
    explain.add_argument("model", help="the .onnx model")
    explain.add_argument("inputs", nargs="*", metavar="INPUT", help="image, .npy array or folder")
    explain.add_argument("--text", default=None, help="explain this text with a token model (tokenizer.json "
                         "beside the model; token methods, default embedding-ig)")
    explain.add_argument("--tokenizer", default=None, help="tokenizer.json for --text (default: beside the model)")
    explain.add_argument("--method", default=None, help=f"comma-separated: {available}")
    explain.add_argument("--out", default="onnx-xai-out", help="output folder (default: ./onnx-xai-out)")
    explain.add_argument("--metric-steps", type=int, default=0,
                         help="also compute deletion/insertion AUC with this many steps (default: off)")
    _explaining(explain)
    cli_dense.add_arguments(explain.add_argument_group("segmentation regions and detections"))
    _common(explain)
    explain.set_defaults(func=cmd_explain)

    layers = sub.add_parser("layers", help="list candidate target layers with their shapes")
    layers.add_argument("model", help="the .onnx model")
    layers.add_argument("--shape", type=lambda t: tuple(int(v) for v in _floats(t)), default=None,
                        help="per-sample input shape C,H,W[,D] where the model's is not fixed")
    layers.add_argument("--debug", action="store_true", help="show tracebacks")
    layers.set_defaults(func=cmd_layers)

    audit = sub.add_parser("audit", help="explain a folder: maps, faithfulness, HTML/JSON/CSV report (resumable)")
    audit.add_argument("model", help="the .onnx model")
    audit.add_argument("folders", nargs="+", metavar="FOLDER", help="folders (or files) of images / .npy arrays")
    audit.add_argument("--methods", default=None, help=f"comma-separated: {available}")
    audit.add_argument("--out", required=True, help="output folder")
    audit.add_argument("--workers", type=_positive, default=1, help="inputs explained in parallel processes")
    audit.add_argument("--metric-steps", type=_positive, default=20, help="deletion/insertion steps (default 20)")
    audit.add_argument("--no-metrics", action="store_true", help="skip deletion/insertion AUC")
    audit.add_argument("--fresh", action="store_true", help="recompute inputs that are already done")
    ray = audit.add_argument_group("engine", "where the inputs are explained (README: Audits on a Ray cluster)")
    ray.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local: --workers processes here; ray: actors on a Ray cluster (pip install 'onnx-xai[ray]')")
    ray.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="join this Ray cluster ('auto', HOST:6379, ray://HOST:10001); default: a local Ray instance")
    ray.add_argument("--ray-actors", type=_positive, default=None, metavar="N",
                     help="actors, each with one model session (default: as many as the cluster's CPUs/GPUs hold)")
    ray.add_argument("--ray-cpus", type=float, default=1.0, metavar="C",
                     help="CPUs per actor, also its ONNX Runtime threads unless --threads (default 1)")
    ray.add_argument("--ray-gpus", type=float, default=0.0, metavar="G", help="GPUs per actor (default 0)")
    ray.add_argument("--ray-batch", type=_positive, default=1, metavar="B", help="inputs per actor call (default 1)")
    _explaining(audit)
    _common(audit)
    audit.set_defaults(func=cmd_audit)

    from .export import export_methods
    export = sub.add_parser("export", help="write one ONNX model returning the outputs and a saliency map")
    export.add_argument("model", help="the .onnx model")
    export.add_argument("--method", default="gradcam", choices=export_methods())
    export.add_argument("--layer", default=None, help="CAM target layer (default: the last spatial layer)")
    export.add_argument("--class-idx", type=int, default=None,
                        help="default of the model's optional class_idx input (default: -1, argmax)")
    export.add_argument("--no-upsample", action="store_true", help="CAM map at the layer's resolution")
    export.add_argument("--no-normalize", action="store_true", help="raw CAM values")
    export.add_argument("--activation", choices=["none", "softmax", "sigmoid"], default="none",
                        help="explain the class logit (none) or its softmax / sigmoid probability")
    export.add_argument("--layout", choices=["nchw", "nhwc"], default=None,
                        help="the model input's layout (default: the sidecar's, else guessed from its shape)")
    export.add_argument("-o", "--out", required=True, help="output .onnx file")
    export.add_argument("--debug", action="store_true", help="show tracebacks")
    export.set_defaults(func=cmd_export)

    cache_p = sub.add_parser("cache", help="show or clear the disk cache of built gradient models")
    cache_p.add_argument("action", choices=("info", "clear"),
                         help="info: directory, entries, size, cap; clear: remove all entries")
    cache_p.add_argument("--debug", action="store_true", help="show tracebacks")
    cache_p.set_defaults(func=cmd_cache)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments. ``explain``'s inputs are optional (``--text`` needs none), so
    argparse takes them as empty right after MODEL: inputs written after options are put back."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and getattr(args, "inputs", None) is not None and not any(r.startswith("-") for r in rest):
        args.inputs = list(args.inputs) + rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("onnx-xai: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OnnxXaiError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"onnx-xai: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
