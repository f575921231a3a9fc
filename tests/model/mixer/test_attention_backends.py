"""The attention backends (train/model/attention.py) compute the same function: FlexAttention's forward
equals the dense SDPA path (the reference) for every mask, at the mixer level and for whole models; the
BlockMask is built once per forward; sinks from the log-sum-exp equal an explicit sink column.
On the CPU flex runs eager and forward only, so everything here is under torch.no_grad."""

import pytest
import torch

import train.model.attention as attention
import train.model.documents as documents_module
from train.model import build_model
from train.model.attention import rescale_by_sinks
from train.model.config import AttentionConfig, MixerConfig, MLAConfig, ModelConfig, PositionConfig
from train.model.documents import Documents
from train.model.hf import hf_config
from train.model.mixer.mla import MultiHeadLatentAttention
from train.model.mixer.softmax_attention import SoftmaxAttention
from tests.model_helpers import assert_cached_decoding_equals_full

T = 300  # over two 128-token tiles: skipped, full and partial blocks all occur
DOC_LENGTHS = [[5, 130, 1, 100, 64], [300]]


def doc_ids(lengths=DOC_LENGTHS):
    return torch.stack([torch.repeat_interleave(torch.arange(len(ls)), torch.tensor(ls)) for ls in lengths])


def both_backends(build):
    """The same module (same weights) built with the dense and the flex backend."""
    torch.manual_seed(0)
    dense = build("dense")
    flex = build("flex")
    flex.load_state_dict(dense.state_dict())
    return dense, flex


def softmax_attention(num_kv_heads, window, sinks):
    def build(backend):
        model = ModelConfig(dim=64, position=PositionConfig(kind="rope"), attention_backend=backend)
        config = MixerConfig(attention=AttentionConfig(num_heads=4, num_kv_heads=num_kv_heads, head_dim=16, window=window, sinks=sinks))
        module = SoftmaxAttention(config, model, layer_idx=0)
        if sinks:
            torch.nn.init.normal_(module.sinks, std=2.0)
        return module

    return build


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("with_documents", [False, True])
@pytest.mark.parametrize("window, sinks", [(None, False), (40, False), (None, True), (40, True)])
def test_flex_softmax_attention_equals_dense(num_kv_heads, with_documents, window, sinks):
    dense, flex = both_backends(softmax_attention(num_kv_heads, window, sinks))
    x_BTD = torch.randn(2, T, 64)
    documents = Documents(doc_ids()) if with_documents else None
    positions_BT = documents.positions_BT if with_documents else torch.arange(T).expand(2, T)
    with torch.no_grad():
        expected_BTD = dense(x_BTD, positions_BT, documents)
        torch.testing.assert_close(flex(x_BTD, positions_BT, documents), expected_BTD, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_documents", [False, True])
def test_flex_mla_equals_dense(with_documents):
    def build(backend):
        model = ModelConfig(dim=64, position=PositionConfig(kind="rope"), attention_backend=backend)
        config = MixerConfig(kind="mla", mla=MLAConfig(num_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
                                                       qk_rope_head_dim=8, v_head_dim=12))  # v dim != q/k dim 24
        return MultiHeadLatentAttention(config, model, layer_idx=0)

    dense, flex = both_backends(build)
    x_BTD = torch.randn(2, T, 64)
    documents = Documents(doc_ids()) if with_documents else None
    positions_BT = documents.positions_BT if with_documents else torch.arange(T).expand(2, T)
    with torch.no_grad():
        torch.testing.assert_close(flex(x_BTD, positions_BT, documents), dense(x_BTD, positions_BT, documents), atol=1e-5, rtol=1e-5)


MODELS = {
    "qwen3_window": ("qwen3_tiny", {"mixers.full.attention.window": 20}),
    "gpt_oss_sinks": ("gpt_oss_tiny", {}),  # a sliding layer (window 8) and a full one, both with sinks
    "deepseek_v3_mla": ("deepseek_v3_tiny", {}),
}


def tiny_models(preset, overrides):
    dense, flex = both_backends(lambda backend: build_model(preset, init_std=0.1, attention_backend=backend, **overrides).eval())
    for layer in flex.layers:
        if getattr(layer.mixer, "sinks", None) is not None:
            torch.nn.init.normal_(layer.mixer.sinks, std=2.0)
    dense.load_state_dict(flex.state_dict())
    return dense, flex


@pytest.mark.parametrize("name", MODELS)
def test_flex_model_equals_dense(name):
    dense, flex = tiny_models(*MODELS[name])
    ids_BT = torch.randint(0, 8192, (2, 160))
    doc_ids_BT = doc_ids([[5, 70, 1, 84], [160]])
    with torch.no_grad():
        for docs_BT in (None, doc_ids_BT):
            expected_BTV = dense(ids_BT, doc_ids_BT=docs_BT)
            assert expected_BTV.std() > 0.1
            torch.testing.assert_close(flex(ids_BT, doc_ids_BT=docs_BT), expected_BTV, atol=1e-5, rtol=1e-5)


def test_flex_prefill_then_dense_decoding_equals_full_forward():
    _, flex = tiny_models(*MODELS["gpt_oss_sinks"])
    assert_cached_decoding_equals_full(flex, torch.randint(0, 8192, (2, 16)), prompt=10, tolerance=1e-5)


def test_block_mask_is_built_once_per_forward_and_window(monkeypatch):
    calls = []

    def counting_create_block_mask(*args, **kwargs):
        calls.append(args[1:5])
        return create_block_mask(*args, **kwargs)

    create_block_mask = documents_module.create_block_mask
    monkeypatch.setattr(documents_module, "create_block_mask", counting_create_block_mask)
    monkeypatch.setattr(documents_module, "_CAUSAL_BLOCK_MASKS", {})
    model = build_model("gpt_oss_tiny", num_layers=4, attention_backend="flex").eval()  # sliding, full, sliding, full
    ids_BT, doc_ids_BT = torch.randint(0, 8192, (2, 32)), doc_ids([[10, 22], [32]])
    with torch.no_grad():
        model(ids_BT, doc_ids_BT=doc_ids_BT)
        assert len(calls) == 2  # one per window (8 and none), shared by the 4 layers
        model(ids_BT, doc_ids_BT=doc_ids_BT)
        assert len(calls) == 4  # documents change with every batch: built again, once per window
        model(ids_BT)
        model(ids_BT)
        assert len(calls) == 6  # without documents the mask depends only on T: kept across forwards
    assert calls[-1] == (None, None, 32, 32)


def test_sink_rescaling_equals_an_explicit_sink_column():
    torch.manual_seed(0)
    B, H, T, L, V = 2, 3, 5, 7, 4
    scores_BHTL = torch.randn(B, H, T, L) * 3
    scores_BHTL[..., 0, 2:] = float("-inf")  # a masked row part
    v_BHLV, sinks_H = torch.randn(B, H, L, V), torch.randn(H) * 2
    out_BHTV = torch.softmax(scores_BHTL, -1) @ v_BHLV
    lse_BHT = torch.logsumexp(scores_BHTL, -1)
    with_sink_BHTL = torch.cat([scores_BHTL, sinks_H.view(1, H, 1, 1).expand(B, H, T, 1)], -1)
    expected_BHTV = torch.softmax(with_sink_BHTL, -1)[..., :L] @ v_BHLV  # the sink's value is zero
    torch.testing.assert_close(rescale_by_sinks(out_BHTV, lse_BHT, sinks_H), expected_BHTV, atol=1e-6, rtol=1e-6)


def test_auto_is_dense_on_cpu(monkeypatch):
    def no_flex(*args, **kwargs):
        raise AssertionError("auto took FlexAttention on the CPU")

    monkeypatch.setattr(attention, "flex_attend", no_flex)
    model = build_model("gpt_oss_tiny")
    assert model.config.attention_backend == "auto"
    model(torch.randint(0, 8192, (1, 16)), doc_ids_BT=doc_ids([[6, 10]])).sum().backward()  # trains on the CPU


def test_flex_with_gradients_on_cpu_names_the_key_and_the_fix():
    model = build_model("qwen3_tiny", attention_backend="flex")
    with pytest.raises(ValueError, match=r"model.attention_backend=flex has no backward on the CPU.*auto or dense"):
        model(torch.randint(0, 8192, (1, 16)))


def test_unknown_backend_names_the_key():
    with pytest.raises(ValueError, match=r"model.attention_backend='fast' is not one of"):
        build_model("qwen3_tiny", attention_backend="fast")


def test_export_ignores_the_backend():
    assert hf_config(build_model("qwen3_tiny", attention_backend="flex").config) == hf_config(build_model("qwen3_tiny").config)


def compare_backends(T=16384, doc_lengths=None, device="cuda", dtype=torch.bfloat16, window=None, sinks=False,
                     mla=False, backward=True, repeats=3):
    """For the GPU check script: one attention layer (GPT-OSS-like softmax attention, 16 query / 2 KV heads of
    64, or a DeepSeek-V3-like MLA with qk 192 / v 128) run with each backend on the same input of one
    sequence of T tokens packed with documents of `doc_lengths`. Returns {backend: (seconds per step, peak
    bytes or None)} and the largest absolute difference of flex from dense in the output and, with
    `backward`, in the input's and every parameter's gradient. A step builds its own Documents, as a
    training forward does."""
    import time

    def build(backend):
        model = ModelConfig(dim=1024, position=PositionConfig(kind="rope"), attention_backend=backend)
        if mla:
            config = MixerConfig(kind="mla", mla=MLAConfig(num_heads=16, q_lora_rank=512, kv_lora_rank=256, qk_nope_head_dim=128,
                                                           qk_rope_head_dim=64, v_head_dim=128))
            return MultiHeadLatentAttention(config, model, layer_idx=0)
        config = MixerConfig(attention=AttentionConfig(num_heads=16, num_kv_heads=2, head_dim=64, window=window, sinks=sinks))
        module = SoftmaxAttention(config, model, layer_idx=0)
        if sinks:
            torch.nn.init.normal_(module.sinks, std=2.0)
        return module

    dense, flex = (m.to(device=device, dtype=dtype) for m in both_backends(build))
    x_BTD = torch.randn(1, T, 1024, device=device, dtype=dtype)
    grad_BTD = torch.randn_like(x_BTD)
    doc_ids_BT = doc_ids([doc_lengths or [T]]).to(device)
    on_cuda = torch.device(device).type == "cuda"
    timings, results = {}, {}
    for backend, module in (("dense", dense), ("flex", flex)):
        def step():
            x = x_BTD.clone().requires_grad_(backward)
            documents = Documents(doc_ids_BT)
            with torch.set_grad_enabled(backward):
                y_BTD = module(x, documents.positions_BT, documents)
                if backward:
                    module.zero_grad(set_to_none=True)
                    y_BTD.backward(grad_BTD)
            return [y_BTD.detach(), *([x.grad, *(p.grad for p in module.parameters())] if backward else [])]

        results[backend] = step()  # warm-up: compiles flex and create_block_mask
        if on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        if on_cuda:
            torch.cuda.synchronize()
        timings[backend] = ((time.perf_counter() - start) / repeats, torch.cuda.max_memory_allocated() if on_cuda else None)
    differences = [(a.float() - b.float()).abs().max().item() for a, b in zip(results["dense"], results["flex"])]
    return timings, {"output": differences[0], "gradients": max(differences[1:], default=None)}


def test_compare_backends_forward_on_cpu():
    _, differences = compare_backends(T=300, doc_lengths=[5, 130, 165], device="cpu", dtype=torch.float32, window=40,
                                      sinks=True, backward=False, repeats=1)
    assert differences["output"] < 1e-5
