"""Token models: a HF BERT-style classifier (seeded random weights, exported in the test) explained
per token, checked against torch autograd, Captum's LayerIntegratedGradients / IntegratedGradients
and direct torch computations of token occlusion and token RISE on the same weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from onnx_xai import EmbeddingGrad, EmbeddingIG, Model, TokenOcclusion, TokenRISE  # noqa: E402
from onnx_xai.cli import main  # noqa: E402
from onnx_xai.errors import UnsupportedModelError  # noqa: E402
from onnx_xai.text import explain_tokens, render_html  # noqa: E402

from torch_models import tiny_bert, tiny_cnn  # noqa: E402

MASK_ID = 4  # "[MASK]" in the test tokenizer


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(torch model, path of its ONNX export, ids (2, 9), attention mask with padding)."""
    net, data = tiny_bert()
    folder = tmp_path_factory.mktemp("bert")
    (folder / "bert.onnx").write_bytes(data)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    return net, folder / "bert.onnx", ids, mask


def _logits(net, ids, mask):
    with torch.no_grad():
        return net(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()


def test_embedding_gradients_equal_autograd(bert):
    net, path, ids, mask = bert
    emb = net.bert.embeddings.word_embeddings(torch.as_tensor(ids)).detach().requires_grad_(True)
    logits = net(inputs_embeds=emb, attention_mask=torch.as_tensor(mask)).logits
    logits[:, 2].sum().backward()
    g, e = emb.grad.numpy(), emb.detach().numpy()
    method = EmbeddingGrad(str(path))
    got = method.gradients(ids, 2, extra_inputs={"attention_mask": mask})
    assert got.shape == (2, 9, 32)
    np.testing.assert_allclose(got, g, rtol=1e-4, atol=1e-6 * np.abs(g).max())
    np.testing.assert_allclose(method(ids, 2, extra_inputs={"attention_mask": mask}), (g * e).sum(-1),
                               rtol=1e-4, atol=1e-6 * np.abs(g * e).sum(-1).max())
    norm = EmbeddingGrad(str(path), reduce="norm")(ids, 2, extra_inputs={"attention_mask": mask})
    np.testing.assert_allclose(norm, np.linalg.norm(g, axis=-1), rtol=1e-4)


@pytest.mark.parametrize("rule,baseline", [("gausslegendre", 0), ("riemann_trapezoid", MASK_ID)])
def test_embedding_ig_equals_captum_layer_integrated_gradients(bert, rule, baseline):
    from captum.attr import LayerIntegratedGradients

    net, path, ids, mask = bert
    forward = lambda i, m: net(input_ids=i, attention_mask=m).logits  # noqa: E731
    lig = LayerIntegratedGradients(forward, net.bert.embeddings.word_embeddings)
    t_ids = torch.as_tensor(ids)
    want, delta = lig.attribute(t_ids, baselines=torch.full_like(t_ids, baseline), target=1,
                                additional_forward_args=(torch.as_tensor(mask),), n_steps=16,
                                method=rule, return_convergence_delta=True)
    method = EmbeddingIG(str(path), baseline=baseline, n_steps=16, method=rule)
    attr, our_delta = method.attributions(ids, 1, extra_inputs={"attention_mask": mask},
                                          return_convergence_delta=True)
    want = want.detach().numpy()
    np.testing.assert_allclose(attr, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    per_token = method(ids, 1, extra_inputs={"attention_mask": mask})
    np.testing.assert_allclose(per_token, want.sum(-1), rtol=1e-4, atol=1e-4 * np.abs(want.sum(-1)).max())
    np.testing.assert_allclose(our_delta, delta.detach().numpy(), atol=1e-5)


def test_embedding_ig_zero_embedding_baseline_equals_captum_ig(bert):
    from captum.attr import IntegratedGradients

    net, path, ids, mask = bert
    emb = net.bert.embeddings.word_embeddings(torch.as_tensor(ids)).detach()
    ig = IntegratedGradients(lambda e, m: net(inputs_embeds=e, attention_mask=m).logits)
    want = ig.attribute(emb, target=0, additional_forward_args=(torch.as_tensor(mask),),
                        n_steps=12).detach().numpy().sum(-1)
    got = EmbeddingIG(str(path), baseline="zeros", n_steps=12)(ids, 0, attention_mask=mask)  # inputs by name
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _occlusion_reference(net, ids, mask, cls, window, by_mask):
    """Captum-style token occlusion computed directly in torch: windows from 0 by 1, the last
    one truncated; mean score drop over the windows covering each token."""
    base = _logits(net, ids, mask)[:, cls]
    t = ids.shape[1]
    total, count = np.zeros(ids.shape), np.zeros(t)
    for s in range(t - window + 1):
        i2, m2 = ids.copy(), mask.copy()
        (m2 if by_mask else i2)[:, s:s + window] = 0 if by_mask else MASK_ID
        total[:, s:s + window] += (base - _logits(net, i2, m2)[:, cls])[:, None]
        count[s:s + window] += 1
    return total / count


@pytest.mark.parametrize("by_mask", [False, True], ids=["mask-id", "attention-mask"])
def test_token_occlusion_equals_direct_torch(bert, by_mask):
    net, path, ids, mask = bert
    want = _occlusion_reference(net, ids, mask, 1, 2, by_mask)
    kw = {"mask_input": "attention_mask"} if by_mask else {"mask_id": MASK_ID}
    got = TokenOcclusion(str(path), window=2, **kw)(ids, 1, extra_inputs={"attention_mask": mask})
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)
    # the functional API, each sequence's top class (argmax of the unperturbed logits)
    top = _logits(net, ids, mask).argmax(1)
    want = np.stack([_occlusion_reference(net, ids, mask, c, 1, False)[i] for i, c in enumerate(top)])
    got = explain_tokens(str(path), ids, method="token-occlusion", options={"mask_id": MASK_ID},
                         attention_mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)


def test_token_rise_equals_direct_torch(bert):
    net, path, ids, mask = bert
    n, p1 = 24, 0.6
    keep = np.random.default_rng(3).random((n, ids.shape[1])) < p1  # the documented masks
    want = np.zeros(ids.shape)
    for k in range(n):
        i2 = np.where(keep[k], ids, MASK_ID)
        want += _logits(net, i2, mask)[:, 2][:, None] * keep[k]
    want /= n * p1
    got = TokenRISE(str(path), n_masks=n, p1=p1, seed=3, mask_id=MASK_ID, batch_size=7)(
        ids, 2, extra_inputs={"attention_mask": mask})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_named_embedding_layer_and_errors(bert, tmp_path):
    net, path, ids, mask = bert
    named = EmbeddingGrad(str(path), embedding_layer="bert.embeddings.word_embeddings")
    assert named.cut.tensor == EmbeddingGrad(str(path)).cut.tensor
    assert named.cut.reads_ids  # BERT reads the ids' shape for its position ids
    with pytest.raises(ValueError, match="closest names"):
        EmbeddingGrad(str(path), embedding_layer="bert.embeddings.no_such")
    with pytest.raises(ValueError, match="also needs input"):
        EmbeddingIG(str(path), n_steps=2)(ids, 0)
    with pytest.raises(ValueError, match="baseline"):
        EmbeddingIG(str(path), baseline=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        EmbeddingIG(str(path), method="simpson")
    with pytest.raises(ValueError, match="mask_input"):
        TokenOcclusion(str(path), mask_input="token_type_ids")
    with pytest.raises(ValueError, match="not a token method"):
        explain_tokens(str(path), ids, method="vanilla", attention_mask=mask)
    _, cnn = tiny_cnn()
    for cls in (EmbeddingIG, TokenOcclusion, TokenRISE):
        with pytest.raises(UnsupportedModelError, match="token models"):
            cls(Model(cnn))


def test_html_rendering():
    page = render_html(["[CLS]", "good", "##ness", "<b>", "bad"], np.array([0.0, 2.0, 1.0, 0.5, -2.0]))
    assert page.count('class="t"') == 5
    assert "good</span><span" in page  # a WordPiece continuation joins its token
    assert "&lt;b&gt;" in page and "rgba(220, 40, 40, 1.000)" in page and "rgba(40, 90, 220, 1.000)" in page
    with pytest.raises(ValueError, match="tokens but"):
        render_html(["a"], np.zeros(2))


def _tokenizer(folder):
    """A WordLevel tokenizer trained offline on a few sentences, [CLS] ... [SEP] added."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(["the film was good and the acting was great",
                             "a bad film with a dull plot", "not good , not bad"], trainer)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))
    return tok


def test_cli_text_prints_tokens_and_writes_html(bert, tmp_path, capsys):
    from captum.attr import LayerIntegratedGradients

    net, path, _, _ = bert
    model = tmp_path / "bert.onnx"
    model.write_bytes(path.read_bytes())
    tok = _tokenizer(tmp_path)
    text = "the acting was good"
    out = tmp_path / "out"
    code = main(["explain", str(model), "--text", text, "--method", "embedding-ig,token-occlusion",
                 "--steps", "8", "--target", "1", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    tokens = tok.encode(text).tokens
    assert tokens == ["[CLS]", "the", "acting", "was", "good", "[SEP]"]
    assert all(t in printed for t in tokens) and "embedding-ig" in printed
    record = json.loads((out / "text.json").read_text())
    assert record["tokens"] == tokens and record["target"]["index"] == 1
    page = (out / "text_embedding-ig.html").read_text()
    assert page.count('class="t"') == len(tokens) and "acting" in page
    ids = torch.tensor([tok.encode(text).ids])
    lig = LayerIntegratedGradients(lambda i: net(input_ids=i).logits, net.bert.embeddings.word_embeddings)
    want = lig.attribute(ids, baselines=torch.zeros_like(ids), target=1, n_steps=8).sum(-1)[0].detach().numpy()
    np.testing.assert_allclose(record["methods"]["embedding-ig"]["scores"], want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    assert main(["explain", str(model), "--text", text, "--method", "vanilla", "--out", str(out)]) == 2
    assert "token methods" in capsys.readouterr().err
    assert main(["explain", str(model), "--text", text, "--tokenizer", str(tmp_path / "none.json"),
                 "--out", str(out)]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    np.save(tmp_path / "ids.npy", np.array([[2, 5, 3]]))
    assert main(["explain", str(model), str(tmp_path / "ids.npy"), "--method", "token-occlusion",
                 "--out", str(out)]) == 2
    assert "give --text" in capsys.readouterr().err


class _MeanEmbedding(torch.nn.Module):
    """ids (B, T) → embedding (B, T, 4) → mean over tokens → logits (B, 3): a one-input token model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb, self.fc = torch.nn.Embedding(20, 4), torch.nn.Linear(4, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def test_image_methods_name_the_token_methods():
    import onnx_xai as ox
    from torch_models import export_onnx

    net = _MeanEmbedding().eval()
    model = Model(export_onnx(net, torch.randint(0, 20, (2, 6)), input_names=("input_ids",)))
    ids = np.random.default_rng(0).integers(0, 20, (1, 6))
    for call in (lambda: ox.VanillaGrad(model)(ids, 0), lambda: ox.IntegratedGradients(model)(ids, 0),
                 lambda: ox.OcclusionSensitivity(model)(ids), lambda: ox.RISE(model)(ids, 0),
                 lambda: ox.GradCAM(model, target_layers="emb")(ids, 0), lambda: ox.LIME(model)(ids, 0),
                 lambda: ox.occlusion_sensitivity(model, ids[0], 0)):
        with pytest.raises((ValueError, UnsupportedModelError), match="token-occlusion"):
            call()
    # ... and those work here: the embedding gradient of a mean is W_fc[c] / T at every token
    method = EmbeddingGrad(model)
    assert method.cut.cut.input_names == [method.cut.tensor]  # the ids fed only the lookup: gone
    g = method.gradients(ids, 2)
    want = net.fc.weight[2].detach().numpy() / 6
    np.testing.assert_allclose(g, np.broadcast_to(want, (1, 6, 4)), rtol=1e-5)


@pytest.fixture(scope="module")
def quantized_bert(bert, tmp_path_factory):
    """The test BERT through onnxruntime's quantize_dynamic (int8 MatMulInteger, uint8 embedding tables)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    path = tmp_path_factory.mktemp("bert_q") / "bert_q.onnx"
    quantization.quantize_dynamic(str(bert[1]), str(path), weight_type=quantization.QuantType.QInt8)
    return path


def test_quantized_embedding_lookup_is_found(bert, quantized_bert):
    net, _, ids, mask = bert
    method = EmbeddingGrad(str(quantized_bert))
    import onnx

    producer = next(n for n in onnx.load(str(quantized_bert)).graph.node if method.cut.tensor in n.output)
    assert producer.op_type == "DequantizeLinear"  # after the Gather of the uint8 table
    e = method.embeddings(ids, {"attention_mask": mask})  # the dequantized table's rows
    want = net.bert.embeddings.word_embeddings(torch.as_tensor(ids)).detach().numpy()
    np.testing.assert_allclose(e, want, atol=2 * np.abs(want).max() / 255)  # 8-bit steps
    # black-box methods run the quantized model itself: close to the float model's occlusion
    occ = TokenOcclusion(str(quantized_bert), mask_id=MASK_ID)(ids, 1, attention_mask=mask)
    ref = _occlusion_reference(net, ids, mask, 1, 1, False)
    assert np.abs(occ - ref).max() < 0.25 * np.abs(ref).max()


def test_quantized_bert_embedding_ig_through_the_float_surrogate(bert, quantized_bert):
    from captum.attr import LayerIntegratedGradients

    net, _, ids, mask = bert
    lig = LayerIntegratedGradients(lambda i, m: net(input_ids=i, attention_mask=m).logits,
                                   net.bert.embeddings.word_embeddings)
    t_ids = torch.as_tensor(ids)
    want = lig.attribute(t_ids, baselines=torch.zeros_like(t_ids), target=1, n_steps=16,
                         additional_forward_args=(torch.as_tensor(mask),)).sum(-1).detach().numpy()
    got = EmbeddingIG(str(quantized_bert), n_steps=16)(ids, 1, extra_inputs={"attention_mask": mask})
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999  # 8-bit weights: close, not equal
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()  # measured: 0.9999992, 0.003


def test_token_type_ids_pass_through(tmp_path):
    """A three-input BERT: token_type_ids reach every method (Captum / torch with the same ids)."""
    from captum.attr import LayerIntegratedGradients

    net, data = tiny_bert(token_types=True)
    ids = np.random.default_rng(1).integers(5, 100, (1, 8))
    types = np.array([[0, 0, 0, 0, 1, 1, 1, 1]])
    extra = {"attention_mask": np.ones_like(ids), "token_type_ids": types}
    model = Model(data)
    t = {k: torch.as_tensor(v) for k, v in extra.items()}
    lig = LayerIntegratedGradients(lambda i, m, tt: net(input_ids=i, attention_mask=m, token_type_ids=tt).logits,
                                   net.bert.embeddings.word_embeddings)
    want = lig.attribute(torch.as_tensor(ids), baselines=torch.zeros_like(torch.as_tensor(ids)), target=2,
                         additional_forward_args=(t["attention_mask"], t["token_type_ids"]),
                         n_steps=8).sum(-1).detach().numpy()
    got = EmbeddingIG(model, n_steps=8)(ids, 2, extra_inputs=extra)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with torch.no_grad():
        logit = lambda i: net(input_ids=torch.as_tensor(i), **t).logits[0, 2].item()  # noqa: E731
        occ = [logit(ids) - logit(np.where(np.arange(8) == k, MASK_ID, ids)) for k in range(8)]
    np.testing.assert_allclose(TokenOcclusion(model, mask_id=MASK_ID)(ids, 2, extra_inputs=extra)[0], occ,
                               rtol=1e-3, atol=1e-6)
