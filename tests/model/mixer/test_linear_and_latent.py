"""Linear mixers, MLA and hybrids against independent references: the recurrent (token by token)
form for the chunked scans, a quadratic-form linear attention written from Katharopoulos et al.,
running documents separately for document resets, the full forward for cached decoding."""

import functools

import pytest
import torch
import torch.nn.functional as F

from train.model import build_model, generate
from train.model.kv_cache import KVCache
from train.model.mixer.delta_rule import chunked_delta_rule, recurrent_delta_rule
from train.model.mixer.linear_scan import chunked_linear_attention, recurrent_linear_attention
from train.model.documents import Documents
from tests.model_helpers import assert_cached_decoding_equals_full

LINEAR_ATTENTION = {"mixers.full": {"kind": "linear_attention", "linear_attention": {"num_heads": 4, "chunk_size": 8}}}
MODELS = {
    "mla": ("deepseek_v3_tiny", {}),
    "linear_attention": ("llama3_tiny", LINEAR_ATTENTION),
    "gated_deltanet_hybrid_3to1": ("qwen3_next_tiny", {"mixers.linear.gated_deltanet.chunk_size": 8}),
    "gated_deltanet_only": ("qwen3_next_tiny", {"layer_mixers": ["linear"], "num_layers": 2, "mixers.linear.gated_deltanet.chunk_size": 8}),
    "mamba2": ("mamba2_tiny", {"mixers.ssm.mamba2.chunk_size": 8}),
    "parallel_hybrid": ("falcon_h1_tiny", {"mixers.hybrid.parallel_hybrid.mamba2.chunk_size": 8}),
}
LINEAR_MIXERS = ["linear_attention", "gated_deltanet_only", "mamba2"]


def random_model(name):
    torch.manual_seed(0)
    preset, overrides = MODELS[name]
    model = build_model(preset, init_std=0.1, **overrides).eval()
    with torch.no_grad():  # move the zero/one-initialised vectors (norms, A_log, dt_bias, D) off their defaults
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


def scan_inputs(B=2, H=3, T=37, K=8, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, H, T, K, generator=g), torch.randn(B, H, T, K, generator=g)
    v, log_decay = torch.randn(B, H, T, V, generator=g), -torch.rand(B, H, T, generator=g)
    beta, state = torch.rand(B, H, T, generator=g), torch.randn(B, H, K, V, generator=g)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [5, 6, 20]] = True  # a one-token document, a reset inside a chunk, one at a chunk edge (8*2 + 4)
    reset[1, 16] = True
    return q, k, v, log_decay, beta, reset, state


@pytest.mark.parametrize("with_decay", [True, False])
@pytest.mark.parametrize("with_reset", [True, False])
def test_chunked_linear_scan_equals_recurrent(with_decay, with_reset):
    q, k, v, log_decay, _, reset, state = scan_inputs()
    args = (q, k, v, log_decay if with_decay else None, reset if with_reset else None, state)
    y_ref, state_ref = recurrent_linear_attention(*args)
    y, final = chunked_linear_attention(*args, chunk=8)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, state_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_reset", [True, False])
def test_chunked_delta_rule_equals_recurrent(with_reset):
    q, k, v, log_decay, beta, reset, state = scan_inputs()
    q, k = F.normalize(q, dim=-1) * 8**-0.5, F.normalize(k, dim=-1)
    args = (q, k, v, log_decay, beta, reset if with_reset else None, state)
    y_ref, state_ref = recurrent_delta_rule(*args)
    y, final = chunked_delta_rule(*args, chunk=8)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, state_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_chunked_scan_gradients_equal_recurrent(rule):
    """Backward through the loop over chunk states (5 chunks, resets, an initial state): every input's
    gradient equals the token-by-token form's."""
    inputs = list(scan_inputs())
    if rule == "delta":
        inputs[0], inputs[1] = F.normalize(inputs[0], dim=-1) * 8**-0.5, F.normalize(inputs[1], dim=-1)
    forms = {"linear": (recurrent_linear_attention, functools.partial(chunked_linear_attention, chunk=8)),
             "delta": (recurrent_delta_rule, functools.partial(chunked_delta_rule, chunk=8))}
    grads = []
    for scan in forms[rule]:
        q, k, v, log_decay, beta, reset, state = (t.clone().requires_grad_(t.is_floating_point()) for t in inputs)
        args = (q, k, v, log_decay, reset, state) if rule == "linear" else (q, k, v, log_decay, beta, reset, state)
        y, final = scan(*args)
        (y.square().sum() + final.square().sum()).backward()
        grads.append([t.grad for t in (q, k, v, log_decay, state) + ((beta,) if rule == "delta" else ())])
    for reference, chunked in zip(*grads):
        assert reference.abs().sum() > 0
        torch.testing.assert_close(chunked, reference, atol=1e-4, rtol=1e-4)


def test_reset_equals_running_each_document_from_a_zero_state():
    q, k, v, log_decay, beta, reset, _ = scan_inputs()
    y, _ = recurrent_delta_rule(q, k, v, log_decay, beta, reset)
    y_alone, _ = recurrent_delta_rule(*(t[:1, :, 20:] for t in (q, k, v, log_decay, beta)))
    torch.testing.assert_close(y[:1, :, 20:], y_alone)
    assert not torch.allclose(y[:1, :, 20:], recurrent_delta_rule(q, k, v, log_decay, beta)[0][:1, :, 20:], atol=1e-3)


def test_linear_attention_matches_quadratic_form_of_the_paper():
    """Katharopoulos et al. eq. 9 with the causal mask: y_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / sum_{j<=i} phi(q_i).phi(k_j)."""
    model = random_model("linear_attention")
    mixer = model.layers[0].mixer
    x_BTD = torch.randn(2, 21, 64)
    B, T, H, K = 2, 21, mixer.num_heads, mixer.head_dim
    with torch.no_grad():
        phi_q, phi_k = (F.elu(p(x_BTD).view(B, T, H, K).transpose(1, 2)) + 1 for p in (mixer.q_proj, mixer.k_proj))
        v = mixer.v_proj(x_BTD).view(B, T, H, K).transpose(1, 2)
        scores = (phi_q @ phi_k.transpose(-1, -2)).tril()
        y = (scores @ v) / (scores.sum(-1, keepdim=True) + mixer.eps)
        expected = mixer.o_proj(y.transpose(1, 2).reshape(B, T, H * K))
        torch.testing.assert_close(mixer(x_BTD, None), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", LINEAR_MIXERS)
def test_mixer_chunked_equals_recurrent_with_documents(name):
    model = random_model(name)
    mixer = model.layers[0].mixer
    x_BTD = torch.randn(2, 30, 64)
    documents = Documents(torch.tensor([[0] * 7 + [1] + [2] * 22, [0] * 30]))
    with torch.no_grad():
        for docs in (None, documents):
            chunked, recurrent = mixer(x_BTD, None, docs), mixer(x_BTD, None, docs, recurrent=True)
            assert chunked.std() > 1e-3
            torch.testing.assert_close(chunked, recurrent, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_documents_equal_separate_runs(name):
    model = random_model(name)
    lengths = [[5, 1, 13, 11], [30]]
    ids_BT = torch.randint(0, 8192, (2, 30))
    doc_ids_BT = torch.stack([torch.repeat_interleave(torch.arange(len(ls)), torch.tensor(ls)) for ls in lengths])
    with torch.no_grad():
        packed_BTV = model(ids_BT, doc_ids_BT=doc_ids_BT)
        start = 0
        for length in lengths[0]:
            alone_TV = model(ids_BT[:1, start : start + length])[0]
            torch.testing.assert_close(packed_BTV[0, start : start + length], alone_TV, atol=1e-4, rtol=1e-4)
            start += length
        torch.testing.assert_close(packed_BTV[1], model(ids_BT[1:])[0], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(packed_BTV[0], model(ids_BT[:1])[0], atol=1e-3)  # documents matter


@pytest.mark.parametrize("name", list(MODELS))
def test_cached_decoding_equals_full_forward(name):
    model = random_model(name)
    ids_BT = torch.randint(0, 8192, (2, 24))
    assert_cached_decoding_equals_full(model, ids_BT, prompt=11, tolerance=1e-4)  # a prefill spanning chunks, then one token at a time


def test_mla_cache_holds_only_latent_and_rope_key():
    model = random_model("mla")
    cache = KVCache(max_len=8)
    with torch.no_grad():
        model(torch.randint(0, 8192, (3, 5)), cache=cache)
    mla = model.config.mixers["mla"].mla
    assert cache.keys[0].shape == (3, 1, 8, mla.kv_lora_rank) and cache.values[0].shape == (3, 1, 8, mla.qk_rope_head_dim)
    assert not cache.states


def test_state_cache_is_fixed_size():
    model = random_model("parallel_hybrid")
    cache = KVCache(max_len=30)
    with torch.no_grad():
        model(torch.randint(0, 8192, (1, 10)), cache=cache)
        sizes = {k: v.shape for k, v in cache.states[0].items()}
        model(torch.randint(0, 8192, (1, 20)), cache=cache)
    assert {k: v.shape for k, v in cache.states[0].items()} == sizes
    assert set(sizes) == {"conv", "recurrent"} and 0 in cache.keys  # attention keys and SSM state, same layer


@pytest.mark.parametrize("name", ["gated_deltanet_hybrid_3to1", "parallel_hybrid"])
def test_greedy_generate_equals_argmax_without_cache(name):
    model = random_model(name)
    prompt_BT = torch.randint(0, 8192, (2, 6))
    out_BT = generate(model, prompt_BT, max_new_tokens=6)
    expected_BT = prompt_BT
    with torch.no_grad():
        for _ in range(6):
            expected_BT = torch.cat([expected_BT, model(expected_BT)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out_BT, expected_BT)


def test_documents_with_a_cache_are_refused():
    model = random_model("mamba2")
    with pytest.raises(ValueError, match="doc_ids cannot be combined"):
        model(torch.zeros(1, 4, dtype=torch.long), doc_ids_BT=torch.zeros(1, 4, dtype=torch.long), cache=KVCache(4))


def test_gradients_reach_every_parameter():
    for name in ("gated_deltanet_hybrid_3to1", "parallel_hybrid", "mla", "linear_attention"):
        model = random_model(name).train()
        model(torch.randint(0, 8192, (1, 20))).logsumexp(-1).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, (name, missing)
