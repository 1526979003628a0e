"""``onnx-xai explain`` for dense and detection outputs: ``--region`` (a segmentation region of
class ``--target-class``), ``--box`` (a detection given by its box) and ``--detection INDEX``
(the model's own INDEX-th detection, highest score first).

Each input gets, per method, ``{input}_{method}.png`` (heatmap with the detection's box or the
region's outline on top, colour bar), ``.npy`` (the map) and ``.json`` (target, parameters),
plus ``{input}_detections.json`` for detectors. A detector's outputs are decoded by
``detection.guess_spec``, or by the ``"detection"`` object of the model's JSON sidecar (the
fields of ``detection.DetectionSpec``, e.g. ``{"anchors_last": false, "objectness": true}``).
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import cli_methods, detection
from .audit import Config, input_keys, input_picture, write_file, write_json
from .preprocess import ImageSpec, Sample, load_sample, read_sidecar
from .report import write_report
from .runtime import Model
from .targets import RegionTarget, Target
from .visualize import encode_png, save_explanation
from .visualize.boxes import CLASS_COLORS, draw_boxes, draw_region, overlay_with_boxes, scale_boxes


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a region or detection target."""
    return any(getattr(args, k, None) is not None for k in ("region", "box", "detection"))


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The ``explain`` flags of dense and detection targets."""
    group.add_argument("--region", default=None, metavar="MASK|BOX|predicted",
                       help="explain class --target-class summed over a region of a segmentation output: a mask "
                            "image / .npy, x0,y0,x1,y1 (3D: x0,y0,z0,x1,y1,z1) in output pixels, or 'predicted'")
    group.add_argument("--target-class", type=int, default=None,
                       help="class of --region / --box (default: the top class / the best-matching candidate's)")
    group.add_argument("--box", default=None, metavar="x0,y0,x1,y1",
                       help="explain the detection of this box (input pixels) with D-RISE's similarity")
    group.add_argument("--detection", type=int, default=None, metavar="INDEX",
                       help="explain the model's INDEX-th detection (0 = highest score)")
    group.add_argument("--conf", type=float, default=0.25, help="score threshold of the model's detections")


def region_of(text: str, spatial: tuple[int, ...]) -> Any:
    """``--region`` → a ``RegionTarget`` region for an output of spatial shape ``spatial``."""
    if text == "predicted":
        return text
    path = Path(text)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy"):
        if not path.is_file():
            raise FileNotFoundError(f"no region mask at {text!r}")
        mask = (np.load(path) if path.suffix.lower() == ".npy" else cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        if mask is None:
            raise ValueError(f"cannot read the region mask {text!r}")
        mask = (np.asarray(mask) != 0).astype(np.float32)
        if mask.ndim == 2 and len(spatial) == 2 and mask.shape != spatial:
            mask = cv2.resize(mask, (spatial[1], spatial[0]), interpolation=cv2.INTER_NEAREST)
        return mask
    try:
        box = np.array([int(v) for v in text.split(",")], np.int64)
    except ValueError:
        raise ValueError(f"--region takes a mask file, x0,y0,x1,y1 or 'predicted', got {text!r}") from None
    if box.shape != (2 * len(spatial),):
        raise ValueError(f"--region box needs {2 * len(spatial)} integers for the output's {len(spatial)}D "
                         f"spatial shape {spatial}, got {text!r}")
    return box


def detection_target(args: argparse.Namespace, model: Model, x: np.ndarray) -> tuple[detection.DetectionTarget,
                                                                                       list[detection.Detection]]:
    """``--box`` / ``--detection`` → the target and the model's own detections of ``x``."""
    sidecar = read_sidecar(args.model).get("detection")  # the sidecar's DetectionSpec fields, if any
    spec = detection.DetectionSpec(**sidecar) if isinstance(sidecar, dict) else detection.guess_spec(model)
    found = detection.detect(model, x, spec, conf=args.conf)[0]
    if args.detection is not None:
        if not 0 <= args.detection < len(found):
            raise ValueError(f"--detection {args.detection}: the model made {len(found)} detections with score "
                             f">= {args.conf} (indices 0..{len(found) - 1}); lower --conf or give --box")
        return detection.DetectionTarget.from_detection(found[args.detection], spec), found
    box = detection.box_of(args.box)
    if args.target_class is not None:
        return detection.DetectionTarget(output=spec.output, box=box, index=args.target_class, spec=spec), found
    cand = detection.candidates(spec, spec.read(model.predict(x, outputs=spec.outputs(model), verbose=False)))
    score = detection.iou(np.asarray(box), cand.boxes[0]) * cand.probs[0].max(-1) * cand.objectness[0]
    best = int(np.argmax(score))
    return detection.DetectionTarget(output=spec.output, box=box, index=int(cand.probs[0, best].argmax()),
                                     spec=spec, probs=cand.probs[0, best]), found


def _target(args: argparse.Namespace, model: Model, x: np.ndarray) -> tuple[Target, dict]:
    """The target of ``x`` and what the record says of it."""
    if args.region is not None:
        out = model.predict(x, verbose=False)
        region = region_of(args.region, tuple(out.shape[2:]))
        tgt = RegionTarget(index=args.target_class, region=region).resolve(out)
        return tgt, {"kind": "region", "class": int(np.asarray(tgt.index)[0]), "region": args.region}
    tgt, found = detection_target(args, model, x)
    return tgt, {"kind": "detection", "class": tgt.index, "box": list(tgt.box),
                 "detections": [{"box": list(d.box), "class": d.index, "score": d.score} for d in found]}


def _options(config: Config, name: str, model: Model, tgt: Target) -> dict:
    """The method's options; a detection's CAM runs on the detector's neck unless --layer says."""
    options = dict(config.options)
    if cli_methods.get(name).kind == "matlab":
        raise ValueError(f"method {name!r} explains a class index only; use occlusion, drise, rise, a CAM or a "
                         "gradient method for a region or a detection")
    if isinstance(tgt, detection.DetectionTarget) and cli_methods.get(name).kind == "cam" and not options.get("layer"):
        options["layer"] = detection.neck_layer(model)
    return options


def _picture(sample: Sample, smap: np.ndarray, tgt: Target, x_spatial: tuple) -> bytes | None:
    """PNG of a 2D map with the detection's box or the region's outline (None for volumes)."""
    if smap.ndim != 2:
        return None
    shown = sample.display.shape[:2]
    if isinstance(tgt, detection.DetectionTarget):
        boxes = scale_boxes([tgt.box], x_spatial, shown)
        labels = [f"class {tgt.index}"] if shown[1] >= 128 else None  # no room for text on a small picture
        return encode_png(overlay_with_boxes(sample.display, smap, boxes, labels))
    region = np.asarray(tgt.region)[0]
    return encode_png(overlay_with_boxes(sample.display, smap, regions=[region] if region.ndim == 2 else []))


def _input_picture(sample: Sample, model: Model, info: dict, x_spatial: tuple) -> np.ndarray | None:
    """The input with every detection's box (detectors) or every class's predicted region
    outlined (segmenters), in the colour of its class (``CLASS_COLORS``); None for volumes."""
    if sample.display.ndim == 3 and sample.display.shape[2] != 3:
        return None
    picture = input_picture(sample)
    color = lambda c: CLASS_COLORS[c % len(CLASS_COLORS)]
    if info["kind"] == "detection":
        found = info["detections"]
        for d, box in zip(found, scale_boxes([d["box"] for d in found], x_spatial, picture.shape[:2])):
            picture = draw_boxes(picture, [box], color(d["class"]), 1)
        return picture
    labels = model.predict(sample.x, verbose=False)[0].argmax(0)
    if labels.ndim != 2:
        return None
    for c in np.unique(labels):
        picture = draw_region(picture, labels == c, color(int(c)))
    return picture


def _record(f: Path, info: dict, tgt: Target, model: Model, x: np.ndarray) -> dict:
    """An audit-style record (``report.write_report``) of one input's target."""
    if info["kind"] == "detection":
        score = float(tgt.score(tgt.spec.read(model.predict(x, outputs=tgt.spec.outputs(model), verbose=False)))[0])
        pred = [{"index": d["class"], "label": f"class {d['class']} at {', '.join(f'{v:.0f}' for v in d['box'])}",
                 "score": d["score"]} for d in info["detections"]]
        label = f"class {info['class']} at {', '.join(f'{v:.0f}' for v in info['box'])}"
    else:
        score = float(tgt(model.predict(x, verbose=False))[0])
        pred, label = [], f"class {info['class']} over {info['region']}"
    return {"input": str(f), "status": "ok", "dir": ".", "prediction": pred or [{"index": info["class"],
            "label": label, "score": score}], "target": {"index": info["class"], "label": label, "score": score},
            "methods": {}}


def explain(args: argparse.Namespace, methods: list[str], config: Config, files: list[Path], out: Path) -> int:
    """Explain every input for its region / detection with every method; the report → exit code."""
    if "embedded" in methods:
        raise ValueError("an exported explainer has its own target; --region/--box/--detection need --method")
    model = Model(config.model, device=config.device, threads=config.threads, verbose=config.verbose)
    sidecar = read_sidecar(config.model)
    spec = ImageSpec.from_sidecar(sidecar, Path(config.model).parent, model.input.shape, config.prep)
    records = []
    for f, key in zip(files, input_keys(files)):
        sample = load_sample(f, model, spec)
        tgt, info = _target(args, model, sample.x)
        record = _record(f, info, tgt, model, sample.x)
        shown = _input_picture(sample, model, info, tuple(sample.x.shape[2:]))
        record["picture"] = f"{key}_input.png"
        write_file(out / record["picture"], encode_png(input_picture(sample) if shown is None else shown))
        for name in methods:
            t0 = time.perf_counter()
            smap, params = cli_methods.run(name, model, sample.x, tgt, _options(config, name, model, tgt),
                                           sidecar, verbose=config.verbose)
            stem = out / f"{key}_{name}"
            meta = {"input": str(f), "model": config.model, "method": name, "target": info, "parameters": params}
            png = _picture(sample, smap, tgt, tuple(sample.x.shape[2:]))
            if png is None:
                save_explanation(stem, sample.display, smap, meta)
            else:
                buf = io.BytesIO()
                np.save(buf, smap, allow_pickle=False)
                write_file(stem.with_suffix(".png"), png)
                write_file(stem.with_suffix(".npy"), buf.getvalue())
                write_json(stem.with_suffix(".json"), meta)
            record["methods"][name] = {"files": {"png": stem.with_suffix(".png").name},
                                       "timings": {"method_s": round(time.perf_counter() - t0, 4)}}
        if info["kind"] == "detection":
            write_json(out / f"{key}_detections.json", info)
        records.append(record)
        print(f"{f}: {info['kind']} {record['target']['label']} -> "
              f"{', '.join(str(out / m['files']['png']) for m in record['methods'].values())}")
    paths = write_report(out, records, methods, {"model": config.model, "target": records[0]["target"]["label"]
                                                 if records else ""}, title="onnx-xai explain")
    print(f"report: {paths['html']}")
    return 0
