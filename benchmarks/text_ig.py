"""Integrated gradients at the embedding output of a BERT-tiny: onnx_xai's EmbeddingIG ÷ Captum's
LayerIntegratedGradients on the same weights (goal ≤ 0.5×).

BERT-tiny's shape (google/bert_uncased_L-2_H-128_A-2: 2 layers, hidden 128, 2 heads, intermediate
512, vocab 30522) with seeded random weights, a 3-class head, exported with torch.onnx; one
sequence of ``--tokens`` ids, ``--steps`` path points (gausslegendre, as Captum's default), both
libraries on ``--threads`` threads, each with its default batching: Captum all path points in
one batch, ours runs of ``internal_batch_size`` 16 spread over its CPU workers. Also checks that
the two agree. Times are medians of interleaved runs, after one warm-up each (our gradient model
is built once and cached, as in an audit).

    python benchmarks/text_ig.py [--tokens 64] [--steps 50] [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import io
import warnings

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from transformers import BertConfig, BertForSequenceClassification

from common import interleaved
from onnx_xai import EmbeddingIG, Model


def bert_tiny() -> tuple[torch.nn.Module, bytes]:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=512, num_labels=3)
    net = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1000, 30000, (1, 16))
    buf = io.BytesIO()
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (ids, torch.ones_like(ids)), buf, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes=axes)
    return net, buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net, data = bert_tiny()
    ids = np.random.default_rng(0).integers(1000, 30000, (1, args.tokens))
    mask = np.ones_like(ids)
    t_ids, t_mask = torch.as_tensor(ids), torch.as_tensor(mask)
    lig = LayerIntegratedGradients(lambda i, m: net(input_ids=i, attention_mask=m).logits,
                                   net.bert.embeddings.word_embeddings)
    ours = EmbeddingIG(Model(data, device="cpu", threads=args.threads, verbose=False),
                       n_steps=args.steps)  # internal_batch_size: its default (16)

    def captum():
        return lig.attribute(t_ids, baselines=torch.zeros_like(t_ids), target=1, n_steps=args.steps,
                             additional_forward_args=(t_mask,)).sum(-1).detach().numpy()

    def onnx_xai():
        return ours(ids, 1, extra_inputs={"attention_mask": mask})

    a, b = onnx_xai(), captum()
    rel = float(np.abs(a - b).max() / np.abs(b).max())
    times = interleaved({"onnx_xai": onnx_xai, "captum": captum}, repeats=args.repeats, warmup=True)
    print(f"BERT-tiny (hidden 128, 2 layers), {args.tokens} tokens, IG({args.steps}), {args.threads} threads")
    print(f"  onnx_xai EmbeddingIG:                 {times['onnx_xai'] * 1e3:8.1f} ms")
    print(f"  captum LayerIntegratedGradients:     {times['captum'] * 1e3:8.1f} ms")
    print(f"  ratio onnx_xai / captum:              {times['onnx_xai'] / times['captum']:8.2f}  (goal <= 0.5)")
    print(f"  max |difference| / max |captum|:      {rel:8.1e}")


if __name__ == "__main__":
    main()
