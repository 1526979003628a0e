"""Text models: per-token attributions, tokenisation from a ``tokenizer.json``, HTML rendering.

In Python no tokenizer is needed — ids in, one score per token out::

    scores = onnx_xai.explain_tokens("bert.onnx", input_ids, attention_mask=mask, target=1)
    # (B, T): EmbeddingIG by default; method="token-occlusion", "embedding-grad", "token-rise"

``onnx-xai explain model.onnx --text "..."`` tokenises with the Hugging Face ``tokenizers``
file beside the model (``tokenizer.json``; ``pip install onnx-xai[text]``), prints every
token with its score and writes a coloured HTML rendering and a JSON file per method.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import registry, targets
from .runtime import ModelSource, softmax

__all__ = ["explain_tokens", "load_tokenizer", "encode", "render_html", "explain_text"]

#: registry kinds that explain token ids (B, T) → (B, T): token methods, attention rollouts
TEXT_KINDS = ("token", "attention")
#: the usual names of a token model's other inputs → the ``tokenizers`` Encoding field
_FIELDS = {"attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def explain_tokens(model: ModelSource, input_ids: Any, target: Any = None, *,
                   method: str = "embedding-ig", options: dict | None = None,
                   **extra_inputs: Any) -> np.ndarray:
    """``(B, T)`` per-token attributions of ``target`` (None: each sequence's top class, an
    int, one per sequence, or an ``onnx_xai.targets`` target) for ``input_ids`` ``(B, T)``.

    ``method``: a registered token method (``embedding-ig``, ``embedding-grad``,
    ``token-occlusion``, ``token-rise``), built with ``options``; ``extra_inputs``: the
    model's other inputs (``attention_mask=...``, ``token_type_ids=...``).
    """
    info = registry.get(method)
    if info.kind not in TEXT_KINDS:
        names = [i.name for i in registry.infos() if i.kind in TEXT_KINDS]
        raise ValueError(f"method {method!r} is not a token method; token methods: {names}")
    explainer = info.impl(targets.as_model(model), **(options or {}))
    return explainer(input_ids, target, extra_inputs=extra_inputs)


def load_tokenizer(path: str | Path) -> Any:
    """A Hugging Face ``tokenizers.Tokenizer`` from ``path`` (a ``tokenizer.json``)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError("tokenising text needs the Hugging Face tokenizers package: "
                          "pip install 'onnx-xai[text]'") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {str(path)!r}: save the model's tokenizer.json "
                                "beside the .onnx file or pass --tokenizer PATH")
    return Tokenizer.from_file(str(path))


def encode(tokenizer: Any, text: str, input_names: list[str]) -> tuple[np.ndarray, dict, list[str]]:
    """``text`` → ``(1, T)`` int64 ids, the extra inputs among ``input_names`` that the
    tokenizer fills (``attention_mask``, ``token_type_ids``), and the ``T`` tokens."""
    enc = tokenizer.encode(text)
    if not enc.ids:
        raise ValueError(f"the tokenizer made no tokens of {text!r}")
    extra = {name: np.asarray([getattr(enc, field)], np.int64)
             for name, field in _FIELDS.items() if name in input_names}
    return np.asarray([enc.ids], np.int64), extra, list(enc.tokens)


def _colour(score: float, top: float) -> str:
    """Red for positive, blue for negative scores, opacity by |score| / top."""
    a = 0.0 if top <= 0 else min(abs(score) / top, 1.0)
    rgb = "220, 40, 40" if score >= 0 else "40, 90, 220"
    return f"rgba({rgb}, {a:.3f})"


def render_html(tokens: list[str], scores: np.ndarray, title: str = "") -> str:
    """A self-contained HTML page: each token on a background coloured by its score (red
    positive, blue negative, opacity ∝ |score| / max |score|), the score in its tooltip;
    WordPiece continuations (``##``) join the previous token."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(scores)} scores")
    top = float(np.abs(scores).max()) if scores.size else 0.0
    spans = []
    for tok, s in zip(tokens, scores):
        glue = tok.startswith("##")
        text = html.escape(tok[2:] if glue else tok)
        spans.append(("" if glue or not spans else " ") +
                     f'<span class="t" style="background:{_colour(s, top)}" title="{s:+.4g}">{text}</span>')
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" + html.escape(title) +
            "</title><style>body{font-family:sans-serif;margin:2em;line-height:2.2}"
            ".t{padding:2px 3px;border-radius:3px}.k{font-size:small;color:#555}</style></head><body>"
            f"<h3>{html.escape(title)}</h3><p>{''.join(spans)}</p>"
            "<p class=\"k\">red: raises the explained score, blue: lowers it; "
            f"opacity ∝ |score| / {top:.4g} (hover a token for its score)</p></body></html>\n")


def explain_text(model: Any, tokenizer: Any, text: str, target: Any, out: Path,
                 params: dict[str, dict], labels: list[str] | None = None) -> dict:
    """Explain ``text`` with each token method of ``params`` (method name → constructor
    arguments); write ``text_<method>.html`` / ``.json`` into ``out``. ``labels``: class
    names. Returns the record written."""
    ids, extra, tokens = encode(tokenizer, text, model.input_names)
    logits = model.predict(ids, extra_inputs=extra, verbose=False)
    probs = softmax(np.asarray(logits, np.float64).reshape(1, -1))[0]
    cls = int(np.argmax(probs)) if target in (None, "auto") else int(target)
    targets.per_sample_classes(cls, 1, probs.size, "--target")
    label = labels[cls] if labels and cls < len(labels) else f"class {cls}"
    record = {"text": text, "tokens": tokens, "methods": {},
              "target": {"index": cls, "label": label, "probability": float(probs[cls])}}
    for name in params:
        info = registry.get(name)
        if info.kind not in TEXT_KINDS:
            raise ValueError(f"--text needs token methods ({', '.join(i.name for i in registry.infos() if i.kind in TEXT_KINDS)}); "
                             f"{name!r} explains {info.kind} inputs")
        tgt = targets.ClassTarget(index=cls, activation=info.score)
        scores = info.impl(model, **params[name]).explain(ids, tgt, extra_inputs=extra)[0]
        page = render_html(tokens, scores, f"{name}: {label} ({cls}, p = {probs[cls]:.3f})")
        (out / f"text_{name}.html").write_text(page, encoding="utf-8")
        record["methods"][name] = {"scores": [float(s) for s in scores], "html": f"text_{name}.html",
                                   "parameters": {k: v for k, v in params[name].items()
                                                  if isinstance(v, (int, float, str, type(None)))}}
    (out / "text.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def run_cli(args: Any, options: dict) -> int:
    """``onnx-xai explain MODEL --text "..."``: tokenise, explain with ``--method`` (default
    ``embedding-ig``), print each token's score, write HTML / JSON into ``--out``.
    ``options``: the command line's method options (``cli._config``)."""
    from . import cli_methods
    from .audit import prepare_output_folder
    from .runtime import Model

    if args.inputs:
        raise ValueError("give INPUT files or --text, not both")
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"no ONNX model at {str(args.model)!r}")
    target = args.target
    if target != "auto" and not str(target).isdigit():
        raise ValueError(f"--target with --text takes a class index or 'auto', got {target!r}")
    methods = cli_methods.parse_methods(args.method or "embedding-ig")
    params = {m: cli_methods.method_arguments(m, options) for m in methods}
    model = Model(args.model, device=args.device, threads=args.threads, verbose=False)
    tokenizer = load_tokenizer(args.tokenizer or Path(args.model).with_name("tokenizer.json"))
    labels = Path(args.labels).read_text(encoding="utf-8").splitlines() if args.labels else None
    out = prepare_output_folder(args.out)
    rec = explain_text(model, tokenizer, args.text, target, out, params, labels)
    t = rec["target"]
    print(f"{t['label']} ({t['index']}, p = {t['probability']:.3f})")
    for name, res in rec["methods"].items():
        print(f"{name} -> {out / res['html']}")
        for tok, s in zip(rec["tokens"], res["scores"]):
            print(f"  {tok:>16s}  {s:+.5f}")
    return 0
