"""Reference formulas of the attention-based methods for the rollout tests, written from the
papers and the authors' code on the attention tensors torch computed (needs torch: import it
after ``pytest.importorskip("torch")``)."""
from __future__ import annotations

import numpy as np
import torch


def paper_rollout(atts, fusion="mean", discard=0.0, row=0):
    """Abnar & Zuidema 2020, one sample at a time: Ã = ½·A + ½·I (A: mean over heads; other
    fusions or a discard_ratio as vit-explain: the lowest entries but (0, 0) zeroed, then
    (A + I)/2 divided by its row sums), rollout = Ã_L ··· Ã_1; returns each sample's row
    ``row`` (the [CLS] token; "mean": the mean row) ``(B, T)``."""
    rows = []
    for b in range(atts[0].shape[0]):
        r = np.eye(atts[0].shape[-1])
        for a in atts:
            a = {"mean": a[b].mean(0), "max": a[b].max(0), "min": a[b].min(0)}[fusion]
            if fusion == "mean" and not discard:
                a = 0.5 * a + 0.5 * np.eye(len(a))
            else:  # vit-explain's rollout
                t = torch.from_numpy(a.copy()).flatten()
                _, idx = t.topk(int(t.numel() * discard), largest=False)
                t[idx[idx != 0]] = 0
                a = (t.reshape(a.shape).numpy() + np.eye(len(a))) / 2
                a = a / a.sum(-1, keepdims=True)
            r = a @ r
        rows.append(r.mean(0) if row == "mean" else r[row])
    return np.stack(rows)


def chefer_relevance(atts, grads, row=0):
    """The authors' ``generate_relevance`` (Transformer-MM-Explainability, ViT): R = I; per block
    cam = (grad · attn).clamp(min=0).mean(heads); R += cam @ R; per sample → ``(B, T)`` rows
    ``row`` ([CLS]; "mean": the mean row)."""
    rows = []
    for b in range(atts[0].shape[0]):
        r = torch.eye(atts[0].shape[-1], dtype=torch.float64)
        for a, g in zip(atts, grads):
            cam = (g[b].double() * a[b].double()).clamp(min=0).mean(dim=0)
            r = r + torch.matmul(cam, r)
        rows.append(r.mean(0) if row == "mean" else r[row])
    return torch.stack(rows).numpy()


def grid(rows, prefix, hw):
    """``(B, T)`` token rows → ``(B, 1, h, w)`` patch grid (the first ``prefix`` tokens dropped)."""
    return rows[:, prefix:].reshape(len(rows), 1, *hw)


def upsampled(maps, size):
    """``F.interpolate`` bilinear (align_corners=False) of ``(B, 1, h, w)`` maps to ``size``."""
    return torch.nn.functional.interpolate(torch.from_numpy(maps), size=size, mode="bilinear",
                                           align_corners=False).numpy()
