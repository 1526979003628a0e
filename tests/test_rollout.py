"""Attention rollout and gradient-weighted rollout (Chefer et al. 2021) on vision transformers
exported from torch inside the tests (Hugging Face ViT, tiny config, seeded random weights; a
small hand-written DeiT-like module with a distillation token on a non-square input).

References: attention rollout written from the paper in NumPy on the attention tensors torch
returns (``output_attentions=True`` / the module's own attention), with vit-explain's
``discard_ratio`` and head fusions; the gradient-weighted variant as the authors' code in torch
with autograd; the upsampling as ``F.interpolate``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx.helper as oh
import pytest

from onnx_xai import AttentionRollout, GradientRollout, Model, UnsupportedModelError, registry
from onnx_xai.targets import ClassTarget

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import torch_models  # noqa: E402  (after the importorskip)
from rollout_refs import chefer_relevance, grid, paper_rollout, upsampled  # noqa: E402
from torch import nn  # noqa: E402

IMG, PATCH = 32, 8


def identity(m):
    return m


@pytest.fixture(scope="module")
def hf_vit():
    """(torch HF ViTForImageClassification, its ONNX bytes): 32×32 RGB, 8×8 patches (4×4
    grid + [CLS] = 17 tokens), 3 blocks of 4 heads, 5 classes."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=IMG, patch_size=PATCH, num_channels=3, hidden_size=32,
                                 num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                                 num_labels=5, attn_implementation="eager")
    net = transformers.ViTForImageClassification(cfg).eval()

    class Logits(nn.Module):
        def __init__(self, vit):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            return self.vit(x).logits
    return net, torch_models.export_onnx(Logits(net), torch.randn(2, 3, IMG, IMG))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).standard_normal((3, 3, IMG, IMG)).astype(np.float32)


def torch_attentions(net, x, grad_classes=None):
    """Attention probabilities ``[(B, heads, T, T)]`` from torch, and (``grad_classes``) the
    gradients of each sample's class logit w.r.t. them (autograd)."""
    out = net(torch.from_numpy(x), output_attentions=True)
    atts = list(out.attentions)
    if grad_classes is None:
        return [a.detach().double().numpy() for a in atts], None
    score = out.logits[torch.arange(len(x)), torch.as_tensor(grad_classes)].sum()
    grads = torch.autograd.grad(score, atts)
    return [a.detach().double() for a in atts], [g.double() for g in grads]


def test_rollout_equals_the_paper_formula_on_torch_attentions(hf_vit, images):
    net, onnx_bytes = hf_vit
    ref = grid(paper_rollout(torch_attentions(net, images)[0]), 1, (4, 4))
    roll = AttentionRollout(Model(onnx_bytes, device="cpu"))
    lay = roll.layout(images.shape[1:])
    assert len(lay.tensors) == 3 and lay.tokens == 17 and lay.prefix == 1 and lay.grid == (4, 4)
    raw = roll.compute_map(images)
    assert raw.shape == (3, 1, 4, 4)
    np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=1e-7)
    # the map is upsampled to the image as F.interpolate (bilinear, align_corners=False)
    up = upsampled(ref, (IMG, IMG))
    np.testing.assert_allclose(AttentionRollout(roll.model, postprocessing=identity)(images), up,
                               rtol=1e-5, atol=1e-7)
    out = roll(images, 2)
    assert out.shape == (3, 1, IMG, IMG) and np.allclose(out.max((1, 2, 3)), 1) and np.allclose(out.min((1, 2, 3)), 0)
    np.testing.assert_allclose(out, roll(images), atol=0)  # class-agnostic


@pytest.mark.parametrize("fusion, discard", [("max", 0.0), ("min", 0.0), ("mean", 0.9), ("max", 0.5)])
def test_head_fusion_and_discard_ratio_equal_vit_explain(hf_vit, images, fusion, discard):
    net, onnx_bytes = hf_vit
    ref = grid(paper_rollout(torch_attentions(net, images)[0], fusion, discard), 1, (4, 4))
    raw = AttentionRollout(onnx_bytes, head_fusion=fusion, discard_ratio=discard).compute_map(images)
    np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=1e-7)


def test_gradient_rollout_equals_chefer_et_al_in_torch(hf_vit, images):
    net, onnx_bytes = hf_vit
    logits = net(torch.from_numpy(images)).logits.detach().numpy()
    classes = [0, 3, 4]
    ref = grid(chefer_relevance(*torch_attentions(net, images, classes)), 1, (4, 4))
    method = GradientRollout(onnx_bytes, postprocessing=identity)
    raw = method.compute_map(images, classes)
    assert raw.shape == (3, 1, 4, 4)
    np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=1e-7)
    # default target: each sample's argmax class; a ClassTarget works the same way
    top = grid(chefer_relevance(*torch_attentions(net, images, logits.argmax(1))), 1, (4, 4))
    np.testing.assert_allclose(method.compute_map(images), top, rtol=1e-4, atol=1e-7)
    up = upsampled(ref, (IMG, IMG))
    np.testing.assert_allclose(method.explain(images, ClassTarget(index=classes)), up, rtol=1e-4, atol=1e-7)


def test_dynamo_export_with_a_pinned_batch(hf_vit, images):
    """The dynamo exporter (unscoped node names, a static batch of 2) explaining 3 images."""
    net, _ = hf_vit

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(Logits().eval(), (torch.from_numpy(images[:2]),), dynamo=True,
                                  verbose=False).model_proto
    model = Model(proto, device="cpu")
    assert model.input.shape[0] == 2
    atts, grads = torch_attentions(net, images, [1, 1, 1])
    np.testing.assert_allclose(AttentionRollout(model).compute_map(images),
                               grid(paper_rollout([a.numpy() for a in atts]), 1, (4, 4)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(GradientRollout(model).compute_map(images, 1),
                               grid(chefer_relevance(atts, grads), 1, (4, 4)), rtol=1e-4, atol=1e-7)


class DistilledViT(nn.Module):
    """A DeiT-like encoder written out by hand: Conv patch embedding (kernel = stride = 8),
    [CLS] + distillation token, 2 pre-norm blocks whose attention is an explicit softmax,
    head on the mean of the two tokens. Keeps each block's attention in ``self.attn``."""

    def __init__(self, dim=24, heads=3, grid=(3, 5), n_classes=4):
        super().__init__()
        self.heads, self.attn = heads, []
        self.embed = nn.Conv2d(3, dim, PATCH, PATCH)
        self.tokens = nn.Parameter(torch.randn(1, 2, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 2 + grid[0] * grid[1], dim) * 0.5)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(2))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 48), nn.GELU(), nn.Linear(48, dim)) for _ in range(2))
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.tokens.expand(len(x), -1, -1), t], 1) + self.pos
        b, n, d = t.shape
        self.attn = []
        for i in range(2):
            q, k, v = self.qkv[i](self.norms[2 * i](t)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
            self.attn.append(a)
            t = t + (a @ v).transpose(1, 2).reshape(b, n, d)
            t = t + self.mlp[i](self.norms[2 * i + 1](t))
        return self.head((t[:, 0] + t[:, 1]) / 2)


def test_distillation_token_and_non_square_grid():
    torch.manual_seed(3)
    net = DistilledViT().eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 24, 40)).astype(np.float32)
    onnx_bytes = torch_models.export_onnx(net, torch.from_numpy(x))
    xt = torch.from_numpy(x)
    logits = net(xt)
    grads = torch.autograd.grad(logits[:, 1].sum(), net.attn)
    atts = [a.detach().double() for a in net.attn]
    roll = AttentionRollout(onnx_bytes)
    lay = roll.layout(x.shape[1:])
    assert lay.tokens == 17 and lay.prefix == 2 and lay.grid == (3, 5)
    np.testing.assert_allclose(roll.compute_map(x), grid(paper_rollout([a.numpy() for a in atts]), 2, (3, 5)),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(GradientRollout(onnx_bytes).compute_map(x, 1),
                               grid(chefer_relevance(atts, [g.double() for g in grads]), 2, (3, 5)),
                               rtol=1e-4, atol=1e-7)
    assert roll(x).shape == (2, 1, 24, 40)


def test_models_without_attention_are_refused_naming_other_methods(hf_vit):
    from conftest import conv_classifier

    with pytest.raises(UnsupportedModelError, match="gradcam"):
        AttentionRollout(conv_classifier())
    # a Softmax that is not an attention (the classifier's probabilities)
    probs = conv_classifier(tail=[oh.make_node("Softmax", ["g"], ["y"], axis=-1)])
    method = GradientRollout(probs)
    with pytest.raises(UnsupportedModelError, match=r"\(B, heads, T, T\).*gradcam"):
        method(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="head_fusion"):
        AttentionRollout(hf_vit[1], head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        AttentionRollout(hf_vit[1], discard_ratio=1.0)


def test_registered_and_the_cli_runs_them_on_the_vit(hf_vit, images, tmp_path):
    net, onnx_bytes = hf_vit
    assert registry.get("rollout").impl is AttentionRollout
    assert registry.get("grad-rollout").impl is GradientRollout
    (tmp_path / "vit.onnx").write_bytes(onnx_bytes)
    np.save(tmp_path / "img.npy", images[0])
    r = subprocess.run([sys.executable, "-m", "onnx_xai.cli", "explain", tmp_path / "vit.onnx",
                        tmp_path / "img.npy", "--method", "rollout,grad-rollout", "--target", "3",
                        "--out", tmp_path / "o", "--quiet"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    atts, grads = torch_attentions(net, images[:1], [3])
    for name, rows in (("rollout", paper_rollout([a.numpy() for a in atts])),
                       ("grad-rollout", chefer_relevance(atts, grads))):
        meta = json.loads((tmp_path / "o" / f"img_npy_{name}.json").read_text())
        assert meta["method"] == name and meta["target"]["index"] == 3
        ref = upsampled(grid(rows, 1, (4, 4)), (IMG, IMG))[0, 0]
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        np.testing.assert_allclose(np.load(tmp_path / "o" / f"img_npy_{name}.npy"), ref, atol=1e-4)


def test_bert_token_rollouts_equal_the_references():
    """A HF BERT classifier (``torch_models.tiny_bert``: sdpa attention exported, dynamic batch
    and length) on ids with padding: per-token [CLS] rows (its own entry set to the row's
    minimum, as the authors' BERT code) against torch's eager attention of the same weights."""
    net, data = torch_models.tiny_bert()
    ids = np.random.default_rng(0).integers(5, 100, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 7:], ids[1, 7:] = 0, 0
    net.config._attn_implementation = "eager"
    out = net(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), output_attentions=True)
    atts = [a.detach().double() for a in out.attentions]
    grads = torch.autograd.grad(out.logits[:, 1].sum(), out.attentions)

    def cls_rows(rows):
        rows = rows.copy()
        rows[:, 0] = rows.min(1)
        return rows
    model = Model(data, device="cpu")
    extra = {"attention_mask": mask}
    raw = AttentionRollout(model).compute_map(ids, extra_inputs=extra)
    assert raw.shape == (2, 9) and np.all(raw[1, 7:] < 1e-6)  # padding gets no attention
    np.testing.assert_allclose(raw, cls_rows(paper_rollout([a.numpy() for a in atts])), rtol=1e-5, atol=1e-7)
    grad = GradientRollout(model, postprocessing=identity).explain(ids, ClassTarget(index=1), **extra)
    np.testing.assert_allclose(grad, cls_rows(chefer_relevance(atts, grads)), rtol=1e-4, atol=1e-8)


def test_cli_text_runs_the_rollouts_on_the_shipped_sentiment_bert(tmp_path):
    """``onnx-xai explain MODEL --text`` with rollout / grad-rollout on the example BERT
    (examples/text, trained on sentiment): one score per token, the sentiment word on top."""
    from onnx_xai.cli import main

    pytest.importorskip("tokenizers")
    model = Path(__file__).resolve().parent.parent / "examples" / "text" / "sentiment_bert.onnx"
    out = tmp_path / "o"
    assert main(["explain", str(model), "--text", "a wonderful, moving film", "--method",
                 "rollout,grad-rollout", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "text.json").read_text())
    for name in ("rollout", "grad-rollout"):
        scores = record["methods"][name]["scores"]
        assert len(scores) == len(record["tokens"]) and record["tokens"][int(np.argmax(scores))] == "wonderful"
        assert (out / f"text_{name}.html").read_text().count('class="t"') == len(record["tokens"])
