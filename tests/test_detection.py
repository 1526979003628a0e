"""Detection targets, decoders, D-RISE and the YOLO neck: against torch autograd (a tiny
ultralytics YOLOv8 exported by tests/data/detection/make_yolo.py, with its reference numbers),
pytorch-grad-cam's 2D projection, a direct NumPy D-RISE, and toy detectors with known objects."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_xai as ox
from onnx_xai import detection as det
from onnx_xai import synthetic
from onnx_xai.errors import UnsupportedModelError
from onnx_xai.kernels import rise as kern

DATA = Path(__file__).parent / "data" / "detection"
YOLO = DATA / "tiny_yolov8.onnx"


@pytest.fixture(scope="module")
def yolo():
    return ox.Model(YOLO, verbose=False), np.load(DATA / "tiny_yolov8_ref.npz")


@pytest.fixture(scope="module")
def toy():
    return ox.Model(synthetic.toy_detector().SerializeToString(), verbose=False)


def test_yolo_raw_outputs_and_spec(yolo):
    model, ref = yolo
    for i in range(2):
        raw = model.predict(ref["x"][i])
        np.testing.assert_allclose(raw, ref["raw"][i], rtol=1e-4, atol=1e-3)
    spec = det.guess_spec(model)
    assert spec == det.DetectionSpec.yolov8("output0")
    cand = det.candidates(spec, ref["raw"][0])
    cx, cy, w, h = ref["raw"][0][0, :4, 5]
    np.testing.assert_allclose(cand.boxes[0, 5], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6)
    np.testing.assert_array_equal(cand.probs[0, :, 1], ref["raw"][0][0, 5])


def test_yolo_anchor_gradient_equals_torch_autograd(yolo):
    """The best-matching anchor's class score, differentiated by the gradient model, equals
    torch autograd's d raw[4 + cls, anchor] / d x on the same weights."""
    model, ref = yolo
    spec = det.guess_spec(model)
    for i in range(2):
        x = ref["x"][i]
        cls, anchor = int(ref["cls"][i]), int(ref["anchor"][i])
        box = det.candidates(spec, ref["raw"][i]).boxes[0, anchor]
        probs = ref["raw"][i][0, 4:, anchor]
        target = det.DetectionTarget(box=box, index=cls, spec=spec, probs=probs)
        assert target.resolve(ref["raw"][i]).anchor[0] == anchor  # IoU 1 × cosine 1 there
        g = ox.VanillaGrad(model).explain(x, target)
        want = ref["grad"][i]
        assert np.abs(g - want).max() <= 1e-4 * np.abs(want).max()


def test_yolo_neck_layer_gradcam_and_eigencam(yolo):
    """The automatic neck layer is layer 21 (P5, read by the head's box and class convs; P3 and
    P4 come before it);
    Grad-CAM there equals relu(Σ_k mean(dS/dA_k) A_k) from torch's activations and autograd
    gradients; EigenCAM equals pytorch-grad-cam's get_2d_projection (up to the SVD's sign)."""
    model, ref = yolo
    layer = det.neck_layer(model)
    assert layer.split("/")[2] == "model.21"  # P5's C2f, the last of the three maps the head reads
    x = ref["x"][0]
    act = model.with_outputs([layer]).predict(x, outputs=[layer])[layer]
    np.testing.assert_allclose(act, ref["neck_act"][0], atol=1e-4)
    target = det.DetectionTarget(box=(0, 0, 8, 8), index=int(ref["cls"][0]), anchor=int(ref["anchor"][0]))
    cam = ox.GradCAM(model, target_layers=layer).compute_map(x, target)
    a, g = ref["neck_act"][0][0], ref["neck_grad"][0][0]
    want = np.maximum((g.mean((1, 2))[:, None, None] * a).sum(0), 0)
    np.testing.assert_allclose(cam[0, 0], want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    eigen = ox.EigenCAM(model, target_layers=layer).compute_map(x)[0, 0]
    proj = ref["eigen"][0][0]
    assert min(np.abs(eigen - np.maximum(proj, 0)).max(), np.abs(eigen - np.maximum(-proj, 0)).max()) < 1e-4


def test_yolo_detect_and_drise_run_on_fixed_batch(yolo):
    model, ref = yolo
    found = det.detect(model, ref["x"][0], conf=0.0045)
    assert found and all(a.score >= b.score for a, b in zip(found[0], found[0][1:]))
    target = det.DetectionTarget.from_detection(found[0][0], det.guess_spec(model))
    sal = ox.DRISE(model, n_masks=64, seed=0, cell_size=8).explain(ref["x"][0], target)
    assert sal.shape == (1, 1, 64, 64) and np.isfinite(sal).all() and sal.std() > 0


def _numpy_drise(session, x, box, probs, masks, p1):
    """D-RISE by the paper's formula, straight from ORT runs of the toy detector (xywh, C
    class scores, no objectness): w_i = max_j IoU(box, b_j) · cos(p, p_j); H = Σ w_i M_i / (N p1)."""
    weights = []
    for m in masks:
        raw = session.run(None, {"images": (x * m)[None].astype(np.float32)})[0][0].astype(np.float64)
        best = 0.0
        for j in range(raw.shape[1]):
            cx, cy, w, h = raw[:4, j]
            b = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            ix = max(0.0, min(box[2], b[2]) - max(box[0], b[0]))
            iy = max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
            union = (box[2] - box[0]) * (box[3] - box[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
            q = raw[4:, j]
            nq = np.sqrt((q ** 2).sum()) * np.sqrt((probs ** 2).sum())
            best = max(best, (ix * iy / union) * (float(q @ probs) / nq if nq else 0.0))
        weights.append(best)
    return np.tensordot(np.array(weights), masks[:, 0], 1) / (len(masks) * p1)


def test_drise_equals_numpy_formula(toy):
    x, _ = synthetic.detection_scene(1, seed=1)
    box, probs = np.array([10.0, 12.0, 24.0, 22.0]), np.array([0.2, 0.9])
    n, p1, cells = 96, 0.5, 8
    sal = ox.DRISE(toy, n_masks=n, cell_size=cells, p1=p1, n_batch=20, seed=3)(
        x, det.DetectionTarget(box=box, index=1, probs=probs))
    mb = kern.MaskBatch((64, 64), 1, (cells, cells), p1, n)
    mb.reset(3)
    masks = mb.fill(np.ones((1, 64, 64), np.float32), n).copy()
    session = ort.InferenceSession(synthetic.toy_detector().SerializeToString())
    want = _numpy_drise(session, x[0], box, probs, masks, p1)
    np.testing.assert_allclose(sal[0, 0], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("how", ["drise", "occlusion", "gradient"])
def test_toy_detector_explanations_hit_their_object(toy, how):
    """Each slot's detection depends only on its object: the map's maximum lies on that
    object (pointing game ≥ 0.9) and never on the other two."""
    x, masks = synthetic.detection_scene(10, seed=5)
    spec = det.DetectionSpec.yolov8()
    found = det.detect(toy, x, spec)
    for k in range(len(masks)):
        tgts = [det.DetectionTarget.from_detection(next(d for d in dets if d.anchor == k), spec) for dets in found]
        if how == "drise":
            sal = ox.DRISE(toy, n_masks=200, cell_size=8, seed=0)(x, tgts)
        elif how == "occlusion":
            sal = np.concatenate([ox.OcclusionSensitivity(toy, mask_size=8, verbose=False).explain(x[i:i + 1], t)
                                  for i, t in enumerate(tgts)])  # the score drop
        else:
            sal = np.concatenate([np.abs(ox.VanillaGrad(toy).explain(x[i:i + 1], t)) for i, t in enumerate(tgts)])  # the score drop
        hits = [ox.metrics.pointing_game(sal, masks[j]).mean() for j in range(len(masks))]
        assert hits[k] >= 0.9, (how, k, hits)
        assert all(h == 0 for j, h in enumerate(hits) if j != k), (how, k, hits)


def _nms_graph():
    """The toy detector followed by a fake NMS end (per-anchor argmax, nothing suppressed):
    boxes (B, K, 4) xyxy, scores (B, K), classes (B, K)."""
    base = synthetic.toy_detector()
    g = base.graph
    for name, v in {"s0": 0, "s2": 2, "s4": 4, "s6": 6, "ax1": 1}.items():
        g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], [v]))
    g.initializer.append(helper.make_tensor("sgn", TensorProto.FLOAT, [1, 4, 1], [-0.5, -0.5, 0.5, 0.5]))
    g.node.extend([
        helper.make_node("Slice", ["output0", "s0", "s2", "ax1"], ["xy"]),
        helper.make_node("Slice", ["output0", "s2", "s4", "ax1"], ["wh"]),
        helper.make_node("Concat", ["xy", "xy"], ["xyxy0"], axis=1),
        helper.make_node("Concat", ["wh", "wh"], ["whwh"], axis=1),
        helper.make_node("Mul", ["whwh", "sgn"], ["off"]),
        helper.make_node("Add", ["xyxy0", "off"], ["xyxy"]),
        helper.make_node("Transpose", ["xyxy"], ["boxes"], perm=[0, 2, 1]),
        helper.make_node("Slice", ["output0", "s4", "s6", "ax1"], ["cls_scores"]),
        helper.make_node("ReduceMax", ["cls_scores"], ["scores"], axes=[1], keepdims=0),
        helper.make_node("ArgMax", ["cls_scores"], ["classes"], axis=1, keepdims=0),
    ])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", 3, 4]),
                     helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 3]),
                     helper.make_tensor_value_info("classes", TensorProto.INT64, ["B", 3])])
    onnx.checker.check_model(base)
    return ox.Model(base.SerializeToString(), verbose=False)


def test_nms_ended_graph_decodes_and_drise_matches_raw_layout(toy):
    """An NMS-ended copy of the toy detector gives the same detections, and D-RISE on it
    equals D-RISE on the raw layout (one-hot classes there: the targets use one-hot probs)."""
    nms_model = _nms_graph()
    assert det.guess_spec(nms_model).is_nms
    x, _ = synthetic.detection_scene(1, seed=2)
    a = det.detect(toy, x, det.DetectionSpec.yolov8())[0]
    b = det.detect(nms_model, x)[0]
    assert [d.index for d in a] == [d.index for d in b]
    np.testing.assert_allclose([d.box for d in a], [d.box for d in b], rtol=1e-6)
    tgt = dict(box=a[0].box, index=a[0].index)
    raw_map = ox.DRISE(toy, n_masks=64, cell_size=8, seed=1)(x, det.DetectionTarget(**tgt))
    nms_map = ox.DRISE(nms_model, n_masks=64, cell_size=8, seed=1)(x, det.DetectionTarget(
        spec=det.DetectionSpec.nms(), **tgt))
    # the toy's only nonzero class score is its slot's class: one-hot up to a scale, objectness = score
    raw_w = det.DetectionTarget(**tgt).score(toy.predict(x))
    nms_w = det.DetectionTarget(spec=det.DetectionSpec.nms(), **tgt).score(
        nms_model.predict(x, outputs=["boxes", "scores", "classes"]))
    assert raw_w[0] > 0.5 and nms_w[0] == pytest.approx(raw_w[0] * a[0].score, rel=1e-5)
    assert np.corrcoef(raw_map.ravel(), nms_map.ravel())[0, 1] > 0.9
    with pytest.raises(UnsupportedModelError, match="pre-NMS"):
        ox.VanillaGrad(nms_model, output="scores").explain(x, det.DetectionTarget(spec=det.DetectionSpec.nms(), **tgt))


def test_similarity_analytic_and_yolov5_layout():
    boxes = np.array([[[0, 0, 10, 10], [5, 0, 15, 10]]], float)
    cand = det.Candidates(boxes, np.array([[[1.0, 0.0], [1.0, 1.0]]]), np.array([[1.0, 0.5]]))
    s = det.pair_similarity(np.array([0, 0, 10, 10.0]), np.array([1.0, 0.0]), cand)
    np.testing.assert_allclose(s, [[1.0, (50 / 150) * (1 / np.sqrt(2)) * 0.5]])
    # YOLOv5 layout (B, N, 5 + C): xywh, objectness, classes
    raw = np.array([[[5, 5, 10, 10, 0.8, 0.1, 0.9]]])
    c = det.candidates(det.DetectionSpec.yolov5(), raw)
    np.testing.assert_allclose(c.boxes, [[[0, 0, 10, 10]]])
    assert c.objectness[0, 0] == 0.8 and c.probs.shape == (1, 1, 2)
    t = det.DetectionTarget(box=(0, 0, 10, 10), index=1, spec=det.DetectionSpec.yolov5())
    w = t.weights(raw)
    assert w[0, 0, 6] == 1 and w.sum() == 1
    assert t(raw)[0] == pytest.approx(0.8 * 0.9 / np.hypot(0.1, 0.9))
    assert list(det.nms(np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30.]]), np.array([0.9, 0.8, 0.7]))) == [0, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="box"):
        det.DetectionTarget(box=(10, 0, 5, 5), index=0)
    with pytest.raises(ValueError, match="index"):
        det.DetectionTarget(box=(0, 0, 5, 5), index=-1)
    with pytest.raises(ValueError, match="box"):
        det.DetectionSpec(box="cxcy")
    with pytest.raises(ValueError, match="all three"):
        det.DetectionSpec(boxes="b")
    with pytest.raises(UnsupportedModelError, match="DetectionSpec"):
        det.candidates(det.DetectionSpec.yolov8(), np.zeros((1, 4, 9)))
    model = ox.Model(synthetic.toy_segmenter().SerializeToString(), verbose=False)
    with pytest.raises(ValueError, match="DetectionTarget"):
        ox.DRISE(model, n_masks=4).explain(np.zeros((1, 1, 64, 64), np.float32), (0, 0, 8, 8))
    with pytest.raises(UnsupportedModelError, match="neck|no good CAM layer"):
        det.neck_layer(model)


def test_cli_explains_a_detection_and_a_segmentation_region(tmp_path):
    """`onnx-xai explain --detection 0` on the toy detector and `--region mask.png --target-class 1`
    on the toy segmenter write overlays whose maps peak on the explained object, with the
    detection's box drawn (white pixels along its edges)."""
    import cv2
    from onnx_xai.cli import main

    x, masks = synthetic.detection_scene(1, seed=1)
    np.save(tmp_path / "scene.npy", x[0])
    onnx.save(synthetic.toy_detector(), tmp_path / "det.onnx")
    onnx.save(synthetic.toy_segmenter(), tmp_path / "seg.onnx")
    cv2.imwrite(str(tmp_path / "mask.png"), masks[2].astype(np.uint8) * 255)
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "det.onnx"), str(tmp_path / "scene.npy"), "--method", "drise,vanilla",
                 "--detection", "0", "--n-masks", "200", "--out", str(out / "det"), "--quiet"]) == 0
    found = det.detect(ox.Model(synthetic.toy_detector().SerializeToString()), x, det.DetectionSpec.yolov8())[0]
    k = found[0].anchor
    for name in ("drise", "vanilla"):
        smap = np.load(out / "det" / f"scene_npy_{name}.npy")
        assert ox.metrics.pointing_game(np.abs(smap)[None, None], masks[k])[0]
        png = cv2.imread(str(out / "det" / f"scene_npy_{name}.png"))
        x0, y0 = (int(np.floor(v)) for v in found[0].box[:2])
        assert (png[y0, x0 + 2:x0 + 8] == 255).all()  # the box's top edge
    report = (out / "det" / "report.html").read_text()
    assert report.count("<img") == 3 and f"class {found[0].index} at" in report  # input with boxes + 2 maps
    assert main(["explain", str(tmp_path / "seg.onnx"), str(tmp_path / "scene.npy"), "--method", "occlusion,vanilla",
                 "--region", str(tmp_path / "mask.png"), "--target-class", "1", "--out", str(out / "seg"),
                 "--quiet"]) == 0
    for name in ("occlusion", "vanilla"):
        smap = np.load(out / "seg" / f"scene_npy_{name}.npy")
        assert ox.metrics.pointing_game(np.abs(smap)[None, None], masks[2])[0]
    other = next(d for d in found if d.anchor != k)  # --box: the class of the best-matching candidate
    box = ",".join(str(round(v)) for v in other.box)
    assert main(["explain", str(tmp_path / "det.onnx"), str(tmp_path / "scene.npy"), "--method", "vanilla",
                 "--box", box, "--out", str(out / "box"), "--quiet"]) == 0
    smap = np.load(out / "box" / "scene_npy_vanilla.npy")
    assert ox.metrics.pointing_game(np.abs(smap)[None, None], masks[other.anchor])[0]
    assert json.loads((out / "box" / "scene_npy_vanilla.json").read_text())["target"]["class"] == other.index
    assert main(["explain", str(tmp_path / "det.onnx"), str(tmp_path / "scene.npy"), "--method", "drise",
                 "--detection", "7", "--out", str(out / "bad"), "--quiet"]) == 2


def test_exported_box_target_gradcam_on_yolo(yolo):
    """export_explainer reads the raw (1, 4 + C, N) tensor as a dense output: with the
    detection's class_idx (row 4 + c) and region (one-hot anchor) inputs its saliency is the
    box-target Grad-CAM, equal to GradCAM with the DetectionTarget (checked against torch above)."""
    model, ref = yolo
    layer = det.neck_layer(model)
    explainer = ox.Model(ox.export_explainer(model, "gradcam", target_layers=layer).SerializeToString(),
                         verbose=False)
    x = ref["x"][0]
    spec = det.guess_spec(model)
    target = det.DetectionTarget(box=det.candidates(spec, ref["raw"][0]).boxes[0, int(ref["anchor"][0])],
                                 index=int(ref["cls"][0]), spec=spec).resolve(ref["raw"][0])
    feeds = target.export_inputs(ref["raw"][0])
    assert feeds["class_idx"].tolist() == [4 + int(ref["cls"][0])] and feeds["region"].argmax() == ref["anchor"][0]
    got = explainer.predict(x, outputs=["saliency"], extra_inputs=feeds)["saliency"]
    want = ox.GradCAM(model, target_layers=layer)(x, target)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_deletion_metric_scores_a_detection(toy):
    """metrics.deletion with a DetectionTarget: deleting the explained object's pixels first
    (its mask as the map) drops the D-RISE similarity faster than deleting another object's."""
    x, masks = synthetic.detection_scene(1, seed=4)
    spec = det.DetectionSpec.yolov8()
    found = det.detect(toy, x, spec)[0]
    target = det.DetectionTarget.from_detection(next(d for d in found if d.anchor == 0), spec)
    own = ox.metrics.deletion(toy, x, masks[0][None, None].astype(np.float32), target, n_steps=16, baseline=0.0)
    other = ox.metrics.deletion(toy, x, masks[1][None, None].astype(np.float32), target, n_steps=16, baseline=0.0)
    assert own.scores[0, 0] == pytest.approx(other.scores[0, 0]) == pytest.approx(1.0, abs=0.05)
    assert own.auc[0] < 0.5 * other.auc[0]
