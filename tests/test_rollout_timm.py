"""Attention rollout and gradient-weighted rollout on timm exports (ViT with a class token,
with 4 register tokens, without a class token (global average pool), DeiT distilled), small
configs from seeded random weights, exported with timm's fused attention (SDPA).

References: the attention probabilities of the same weights in torch (timm's unfused attention
path, read at ``attn.attn_drop``), the paper's rollout in NumPy and the authors' gradient rule
in torch with autograd (``rollout_refs``). Needs timm (which needs torchvision): runs in the
grad-cam venv.
"""
from __future__ import annotations

import numpy as np
import pytest

from onnx_xai import AttentionRollout, GradientRollout, Model, UnsupportedModelError

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
import torch_models  # noqa: E402  (after the importorskip)
from rollout_refs import chefer_relevance, grid, paper_rollout, upsampled  # noqa: E402
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
CASES = {  # name → (model, prefix tokens, the relevance row: [CLS] or the mean row)
    "vit": (lambda: VisionTransformer(**SMALL), 1, 0),
    "vit-registers": (lambda: VisionTransformer(reg_tokens=4, **SMALL), 5, 0),
    "vit-gap": (lambda: VisionTransformer(class_token=False, global_pool="avg", **SMALL), 0, "mean"),
    "deit-distilled": (lambda: VisionTransformerDistilled(**SMALL), 2, 0),
}


def attention_of(net, x, classes):
    """Each block's attention probabilities on ``x`` and the gradients of each sample's class
    logit w.r.t. them, from timm's unfused attention path."""
    kept = []
    hooks = [blk.attn.attn_drop.register_forward_hook(lambda m, i, o: kept.append(o)) for blk in net.blocks]
    for blk in net.blocks:
        blk.attn.fused_attn = False
    try:
        logits = net(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad(logits[torch.arange(len(x)), torch.as_tensor(classes)].sum(), kept)
    return [a.detach().double() for a in kept], list(grads)


@pytest.mark.parametrize("name", list(CASES))
def test_timm_rollouts_equal_the_references(name):
    build, prefix, row = CASES[name]
    torch.manual_seed(0)
    net = build().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = Model(torch_models.export_onnx(net, torch.from_numpy(x)), device="cpu")
    atts, grads = attention_of(net, x, [2, 4])
    roll = AttentionRollout(model)
    lay = roll.layout(x.shape[1:])
    assert len(lay.tensors) == 2 and lay.prefix == prefix and lay.grid == (4, 4)
    ref = grid(paper_rollout([a.numpy() for a in atts], row=row), prefix, (4, 4))
    np.testing.assert_allclose(roll.compute_map(x), ref, rtol=1e-5, atol=1e-7)
    ref = grid(chefer_relevance(atts, grads, row=row), prefix, (4, 4))
    np.testing.assert_allclose(GradientRollout(model, postprocessing=lambda m: m)(x, [2, 4]),
                               upsampled(ref, (32, 32)), rtol=1e-4, atol=1e-7)


def test_swin_windowed_attention_is_refused():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    net = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
                          num_heads=(2, 2), num_classes=3).eval()
    method = AttentionRollout(torch_models.export_onnx(net, torch.randn(2, 3, 32, 32)))
    with pytest.raises(UnsupportedModelError, match=r"runs over 4 windows per sample.*gradcam"):
        method(np.zeros((1, 3, 32, 32), np.float32))
