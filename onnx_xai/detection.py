"""detection: read an ONNX detector's outputs as candidate boxes, and explain one detection.

A detector's outputs are decoded by a ``DetectionSpec`` into candidates, per run: boxes
``(n, K, 4)`` (x0, y0, x1, y1 in input pixels), class-probability vectors ``(n, K, C)`` and an
objectness ``(n, K)`` (1 where the model has none). Presets cover the common layouts:

- ``DetectionSpec.yolov8()``: ultralytics YOLOv8 / v11 ``(B, 4 + C, N)`` — cx, cy, w, h, then
  C class scores per anchor (already sigmoid);
- ``DetectionSpec.yolov5()``: ``(B, N, 5 + C)`` — cx, cy, w, h, objectness, C class scores;
- ``DetectionSpec.nms(boxes, scores, classes)``: graphs ending in NMS, padded outputs
  ``(B, K, 4)``, ``(B, K)``, ``(B, K)`` (a score of 0 or a class < 0 is padding);

and the fields say any other layout (anchors first or last, xywh or xyxy, objectness or not,
the activation to apply to the class scores).

``DetectionTarget`` explains one detection (a box and its class) with D-RISE's similarity
(Petsiuk et al. 2021): for each candidate ``j`` of a run,
``s_j = IoU(box, box_j) · cos(p, p_j) · objectness_j``, and the run's score is ``max_j s_j``.
Black-box methods (``drise``, RISE, occlusion, metrics) call it on the raw outputs; gradient
methods and Grad-CAM differentiate the raw pre-NMS class score of the best-matching anchor
(chosen on the unperturbed input), the one element its ``weights`` pick.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Sequence

import numpy as np

from .autolayer import auto_layer
from .errors import UnsupportedModelError
from .finite import check_number
from .runtime import Model, ModelSource, sigmoid, softmax
from .targets import Target, as_model

__all__ = ["DetectionSpec", "Candidates", "Detection", "DetectionTarget", "candidates", "iou",
           "similarity", "pair_similarity", "nms", "detect", "guess_spec", "neck_layer", "box_of"]

BOX_FORMATS = ("xywh", "xyxy")


@dataclass(frozen=True)
class DetectionSpec:
    """How to read a detector's outputs (see the module docstring).

    Raw tensor layouts (``output``: its name, None = the model's first output):
    ``anchors_last`` True for ``(B, 4[+1] + C, N)``, False for ``(B, N, 4[+1] + C)``;
    ``box`` ``"xywh"`` (centre, size) or ``"xyxy"``; ``objectness``: a score after the box
    values; ``activation``: applied to the class scores (``"none"``, ``"sigmoid"``,
    ``"softmax"``). NMS-ended graphs: ``boxes``, ``scores``, ``classes`` output names.
    """

    output: str | None = None
    anchors_last: bool = True
    box: str = "xywh"
    objectness: bool = False
    activation: str = "none"
    boxes: str | None = None
    scores: str | None = None
    classes: str | None = None

    def __post_init__(self) -> None:
        if self.box not in BOX_FORMATS:
            raise ValueError(f"box must be one of {BOX_FORMATS}, got {self.box!r}")
        if self.activation not in ("none", "sigmoid", "softmax"):
            raise ValueError(f"activation must be 'none', 'sigmoid' or 'softmax', got {self.activation!r}")
        named = [self.boxes, self.scores, self.classes]
        if any(n is not None for n in named) and not all(n is not None for n in named):
            raise ValueError("an NMS spec needs all three output names: boxes, scores and classes")

    @classmethod
    def yolov8(cls, output: str | None = None) -> "DetectionSpec":
        """ultralytics YOLOv8 / v11: ``(B, 4 + C, N)``, xywh, no objectness."""
        return cls(output=output)

    @classmethod
    def yolov5(cls, output: str | None = None) -> "DetectionSpec":
        """YOLOv5-style: ``(B, N, 5 + C)``, xywh, objectness."""
        return cls(output=output, anchors_last=False, objectness=True)

    @classmethod
    def nms(cls, boxes: str = "boxes", scores: str = "scores", classes: str = "classes") -> "DetectionSpec":
        """A graph ending in NMS: boxes ``(B, K, 4)`` xyxy, scores ``(B, K)``, classes ``(B, K)``."""
        return cls(box="xyxy", boxes=boxes, scores=scores, classes=classes)

    @property
    def is_nms(self) -> bool:
        return self.boxes is not None

    def outputs(self, model: Model) -> list[str]:
        """The output names read (the raw tensor: ``output`` or the model's first)."""
        return model.check_outputs([self.boxes, self.scores, self.classes] if self.is_nms else self.output)

    def read(self, got: dict[str, np.ndarray]) -> Any:
        """What ``candidates`` decodes, from the dict ``Model.predict`` returns for ``outputs``."""
        return got if self.is_nms else next(iter(got.values()))

    def head(self) -> int:
        """Values before the class scores in a raw tensor (4 box values [+ objectness])."""
        return 5 if self.objectness else 4


class Candidates(NamedTuple):
    """Decoded candidates of ``n`` runs: boxes ``(n, K, 4)`` xyxy, probs ``(n, K, C)``,
    objectness ``(n, K)`` (all float64)."""

    boxes: np.ndarray
    probs: np.ndarray
    objectness: np.ndarray


def _xyxy(b: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "xyxy":
        return b
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


def candidates(spec: DetectionSpec, outputs: Any) -> Candidates:
    """Decode ``outputs`` (the raw tensor, or a dict of output name → array) of ``n`` runs."""
    if spec.is_nms:
        if not isinstance(outputs, dict):
            raise ValueError("an NMS spec decodes a dict of outputs (boxes, scores, classes)")
        boxes = np.asarray(outputs[spec.boxes], np.float64)
        scores = np.asarray(outputs[spec.scores], np.float64)
        classes = np.asarray(outputs[spec.classes]).astype(np.int64)
        if boxes.ndim == 2:  # one run, unbatched
            boxes, scores, classes = boxes[None], scores[None], classes[None]
        if boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2] or classes.shape != scores.shape:
            raise UnsupportedModelError(f"NMS outputs must be boxes (B, K, 4), scores (B, K), classes (B, K); got "
                                        f"{boxes.shape}, {scores.shape}, {classes.shape}")
        n_cls = int(max(classes.max(initial=0) + 1, 1))
        probs = (classes[..., None] == np.arange(n_cls)).astype(np.float64)
        return Candidates(_xyxy(boxes, spec.box), probs, np.where(classes >= 0, scores, 0.0))
    raw = np.asarray(outputs[spec.output] if isinstance(outputs, dict) else outputs, np.float64)
    if raw.ndim != 3 or (raw.shape[1] if spec.anchors_last else raw.shape[2]) <= spec.head():
        raise UnsupportedModelError(
            f"a raw detector output must be (B, {spec.head()} + C, N) or (B, N, {spec.head()} + C) per the "
            f"DetectionSpec, got shape {raw.shape}; give a DetectionSpec that describes it")
    if spec.anchors_last:
        raw = raw.transpose(0, 2, 1)
    h = spec.head()
    probs = raw[..., h:]
    if spec.activation == "sigmoid":
        probs = sigmoid(probs)
    elif spec.activation == "softmax":
        probs = softmax(probs, axis=-1)
    obj = raw[..., 4] if spec.objectness else np.ones(raw.shape[:2])
    return Candidates(_xyxy(raw[..., :4], spec.box), probs, obj)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy ``box`` ``(4,)`` with ``boxes`` ``(..., 4)`` → ``(...)`` (0 for empty boxes)."""
    box, boxes = np.asarray(box, np.float64), np.asarray(boxes, np.float64)
    lo, hi = np.maximum(box[:2], boxes[..., :2]), np.minimum(box[2:], boxes[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pair_similarity(box: np.ndarray, probs: np.ndarray, cand: Candidates) -> np.ndarray:
    """``(n, K)`` D-RISE similarity of the target (``box`` ``(4,)``, ``probs`` ``(C,)``) with
    every candidate: IoU · cosine of class vectors · objectness."""
    c = min(len(probs), cand.probs.shape[-1])
    p, q = np.asarray(probs, np.float64)[:c], cand.probs[..., :c]
    denom = np.linalg.norm(p) * np.linalg.norm(q, axis=-1)
    cos = np.where(denom > 0, (q @ p) / np.where(denom > 0, denom, 1.0), 0.0)
    return iou(box, cand.boxes) * cos * cand.objectness


def similarity(box: np.ndarray, probs: np.ndarray, cand: Candidates) -> np.ndarray:
    """``(n,)`` D-RISE score of each run: the best candidate's similarity with the target."""
    s = pair_similarity(box, probs, cand)
    return s.max(axis=1) if s.shape[1] else np.zeros(len(s))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order, keep = list(np.argsort(-np.asarray(scores), kind="stable")), []
    while order:
        i = order.pop(0)
        keep.append(i)
        if order:
            rest = np.asarray(order)
            order = list(rest[iou(boxes[i], boxes[rest]) <= iou_threshold])
    return np.asarray(keep, np.int64)


@dataclass(frozen=True)
class Detection:
    """One detection of the model's own decoding: ``box`` (x0, y0, x1, y1), ``index`` (class),
    ``score`` (class score × objectness), ``probs`` ``(C,)`` and ``anchor`` (its candidate)."""

    box: tuple[float, float, float, float]
    index: int
    score: float
    probs: np.ndarray = field(repr=False)
    anchor: int


def guess_spec(model: Model) -> DetectionSpec:
    """A spec from the output names and shapes: ``boxes``/``scores``/``classes`` outputs → NMS;
    a 3D first output ``(B, a, b)`` → YOLOv5's ``(B, N, 5 + C)`` when a > b ≥ 6, else YOLOv8's."""
    names = set(model.output_names)
    if {"boxes", "scores", "classes"} <= names:
        return DetectionSpec.nms()
    shape = model.outputs[0].shape
    if shape is None or len(shape) != 3:
        raise UnsupportedModelError(f"cannot tell how to decode the outputs {model.output_names} of this "
                                    "model: give a DetectionSpec (yolov8(), yolov5(), nms(...) or fields)")
    a, b = shape[1], shape[2]
    if isinstance(a, int) and isinstance(b, int) and a > b >= 6:  # (B, N, 5 + C), C >= 1
        return DetectionSpec.yolov5(model.output_names[0])
    return DetectionSpec.yolov8(model.output_names[0])


def detect(model: ModelSource, x: np.ndarray, spec: DetectionSpec | None = None, *, conf: float = 0.25,
           iou_threshold: float = 0.45, extra_inputs: dict | None = None) -> list[list[Detection]]:
    """The model's own detections of each sample of ``x``: candidates whose score (best class ×
    objectness) is ≥ ``conf``, then per-class NMS; highest score first."""
    model = as_model(model)
    spec = spec or guess_spec(model)
    check_number("conf", conf, 0.0, 1.0)
    names = spec.outputs(model)
    got = model.predict(model.check_input(x), outputs=names, extra_inputs=extra_inputs, verbose=False)
    cand = candidates(spec, spec.read(got))
    result = []
    for boxes, probs, obj in zip(*cand):
        cls = probs.argmax(-1) if probs.shape[-1] else np.zeros(len(boxes), np.int64)
        score = probs.max(-1) * obj if probs.shape[-1] else obj
        keep = np.flatnonzero(score >= conf)
        kept = []
        for c in np.unique(cls[keep]):
            same = keep[cls[keep] == c]
            kept += same[nms(boxes[same], score[same], iou_threshold)].tolist()
        kept.sort(key=lambda j: -score[j])
        result.append([Detection(tuple(float(v) for v in boxes[j]), int(cls[j]), float(score[j]), probs[j],
                                 int(j)) for j in kept])
    return result


@dataclass(frozen=True)
class DetectionTarget(Target):
    """One detection: ``box`` (x0, y0, x1, y1 in input pixels) with class ``index``, read by
    ``spec`` (None: ``DetectionSpec.yolov8()`` of the target's ``output``).

    ``probs``: the detection's class-probability vector (None: one-hot of ``index``).
    Called on raw outputs ``(n, ...)`` it returns D-RISE's similarity per run; its
    ``weights`` pick the raw class score of ``anchor``, the candidate that best matches the
    detection on the unperturbed input (``resolve`` fixes it; a gradient target).
    """

    box: Any = None
    index: int = 0
    spec: DetectionSpec | None = None
    probs: Any = None
    anchor: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        box = np.asarray(self.box, np.float64) if self.box is not None else None
        if box is None or box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {self.box!r}")
        if not isinstance(self.index, (int, np.integer)) or self.index < 0:
            raise ValueError(f"index must be a class index >= 0, got {self.index!r}")
        if self.spec is None:
            object.__setattr__(self, "spec", DetectionSpec.yolov8(self.output))
        elif self.output is None and self.spec.output is not None:
            object.__setattr__(self, "output", self.spec.output)

    @classmethod
    def from_detection(cls, det: Detection, spec: DetectionSpec) -> "DetectionTarget":
        """The target of one of ``detect``'s detections (its box, class, probabilities, anchor)."""
        return cls(output=spec.output, box=det.box, index=det.index, spec=spec, probs=det.probs,
                   anchor=None if spec.is_nms else det.anchor)

    def class_vector(self, n_classes: int) -> np.ndarray:
        """``(C,)`` the target's class-probability vector."""
        if self.probs is not None:
            return np.asarray(self.probs, np.float64)
        if self.index >= n_classes:
            raise ValueError(f"class {self.index} out of range: the detector has {n_classes} classes")
        p = np.zeros(n_classes)
        p[self.index] = 1.0
        return p

    def score(self, outputs: Any) -> np.ndarray:
        """``(n,)`` D-RISE similarity of each run (``outputs``: raw tensor or dict of outputs)."""
        cand = candidates(self.spec, outputs)
        n_cls = cand.probs.shape[-1] if not self.spec.is_nms else max(cand.probs.shape[-1], self.index + 1)
        return similarity(np.asarray(self.box, np.float64), self.class_vector(n_cls), cand)

    def __call__(self, out: np.ndarray) -> np.ndarray:
        return self.score(out)

    @property
    def needs_output(self) -> bool:
        return self.anchor is None and not self.spec.is_nms

    def best_anchor(self, out: np.ndarray) -> np.ndarray:
        """``(n,)`` the candidate of each run most similar to the detection."""
        cand = candidates(self.spec, out)
        sim = pair_similarity(np.asarray(self.box, np.float64), self.class_vector(cand.probs.shape[-1]), cand)
        return sim.argmax(axis=1)

    def resolve(self, out: np.ndarray) -> "DetectionTarget":
        if self.anchor is not None or self.spec.is_nms:  # NMS outputs: no anchor to fix
            return self
        return replace(self, anchor=self.best_anchor(out))

    def select(self, rows: np.ndarray) -> "DetectionTarget":
        if self.anchor is None or np.ndim(self.anchor) == 0:
            return self
        return replace(self, anchor=np.asarray(self.anchor)[rows])

    def export_inputs(self, out: np.ndarray) -> dict[str, np.ndarray]:
        """The ``class_idx`` and ``region`` inputs that make an exported explainer of the raw
        tensor (``export_explainer``, which reads it as a dense ``(B, K, N)`` output) explain
        this detection: the row and the one-hot column of the best anchor's class score."""
        w = self.weights(out)
        row = np.flatnonzero(w[0].any(axis=1))
        return {"class_idx": row.astype(np.int64), "region": w[:1, row[0]].astype(np.float32)}

    def weights(self, out: np.ndarray) -> np.ndarray:
        """One-hot ``(n, *out.shape[1:])`` at the class score of the resolved anchor."""
        if self.spec.is_nms:
            raise UnsupportedModelError("gradients need the raw pre-NMS tensor: explain the NMS graph with "
                                        "DetectionSpec(output=<raw tensor name>, ...) of that tensor")
        out = np.asarray(out)
        anchors = np.broadcast_to(self.resolve(out).anchor, (len(out),))
        row = self.spec.head() + self.index
        w = np.zeros(out.shape, np.float32)
        n = np.arange(len(out))
        if self.spec.anchors_last:
            w[n, row, anchors] = 1.0
        else:
            w[n, anchors, row] = 1.0
        return w


# ---------------------------------------------------------------------------- neck layer
def neck_layer(model: ModelSource) -> str:
    """The last neck feature map before a detector's head — the layer pytorch-grad-cam's YOLO
    tutorial runs EigenCAM on: ``autolayer.auto_layer``'s detector rule (the last spatial map
    read by two or more Convs, the head's box and class branches). ``UnsupportedModelError``
    when the automatic layer of the graph is not a detector neck."""
    choice = auto_layer(as_model(model))
    if not choice.rule.startswith("detector"):
        raise UnsupportedModelError(f"no detector neck found (the automatic CAM layer is {choice.tensor!r}: "
                                    f"{choice.rule}); pass the layer yourself (see `onnx-xai layers MODEL`)")
    return choice.tensor


def box_of(value: Sequence[float] | str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` or 4 numbers → a checked box."""
    vals = [float(v) for v in value.split(",")] if isinstance(value, str) else [float(v) for v in value]
    if len(vals) != 4 or vals[2] <= vals[0] or vals[3] <= vals[1]:
        raise ValueError(f"a box is x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {value!r}")
    return tuple(vals)  # type: ignore[return-value]
