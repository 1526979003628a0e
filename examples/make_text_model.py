"""Make examples/text/: a tiny BERT sentiment classifier (ONNX), its tokenizer.json, and the README's
picture of `onnx-xai explain --text` (needs torch, transformers, tokenizers; chromium for the PNG).

A WordLevel tokenizer is trained on a few toy reviews; a BertForSequenceClassification (hidden 32,
2 layers, 2 heads; 0 = negative, 1 = positive) is trained on them for 150 steps
(seeded, one thread), exported with torch.onnx (inputs input_ids, attention_mask; dynamic batch and length).

    python examples/make_text_model.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification

HERE = Path(__file__).resolve().parent
OUT = HERE / "text"
GOOD = ["good", "great", "wonderful", "fine", "brilliant"]
BAD = ["bad", "dull", "awful", "boring", "weak"]
NOUNS = ["film", "plot", "acting", "music", "story", "ending"]
TEXT = "the acting was brilliant but the plot was dull"


def reviews() -> tuple[list[str], list[int]]:
    """Toy reviews: "the NOUN was ADJ", "ADJ NOUN", and two-clause "... but ..." sentences
    labelled by the second clause."""
    texts, labels = [], []
    for i, noun in enumerate(NOUNS):
        for j, (g, b) in enumerate(zip(GOOD, BAD)):
            texts += [f"the {noun} was {g}", f"the {noun} was {b}", f"a {g} {noun}", f"a {b} {noun}"]
            labels += [1, 0, 1, 0]
            other = NOUNS[(i + j + 1) % len(NOUNS)]
            texts += [f"the {noun} was {g} but the {other} was {b}",
                      f"the {noun} was {b} but the {other} was {g}"]
            labels += [0, 1]
    return texts, labels


def tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    texts, labels = reviews()
    tok = tokenizer(texts)
    enc = tok.encode_batch(texts)
    tok.no_padding()
    tok.save(str(OUT / "tokenizer.json"))
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    y = torch.tensor(labels)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, num_labels=2)
    net = BertForSequenceClassification(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(150):
        loss = net(input_ids=ids, attention_mask=mask, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(input_ids=ids, attention_mask=mask).logits.argmax(1) == y).float().mean()
    print(f"training loss {loss.item():.4f}, accuracy {acc.item():.3f}")
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "logits": {0: "batch"}}
    torch.onnx.export(net, (ids[:2], mask[:2]), str(OUT / "sentiment_bert.onnx"), dynamo=False,
                      opset_version=17, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_axes=axes)
    (OUT / "labels.txt").write_text("negative\npositive\n")
    picture(OUT / "sentiment_bert.onnx")


def picture(model: Path) -> None:
    """Run the CLI on TEXT and screenshot its HTML with headless chromium."""
    work = OUT / "out"
    subprocess.run([sys.executable, "-m", "onnx_xai", "explain", str(model), "--text", TEXT,
                    "--method", "embedding-ig", "--labels", str(OUT / "labels.txt"), "--out", str(work), "--quiet"], check=True)
    page = work / "text_embedding-ig.html"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={HERE / 'pictures' / 'text_embedding_ig.png'}", "--window-size=720,200",
                    page.as_uri()], check=True, capture_output=True)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
