"""The linear mixers' kernel seam (train/model/mixer/kernels.py) and the PyTorch fallback it leaves:
which path runs; the layouts handed to fla / mamba_ssm / causal_conv1d and mapped back, through fakes
that compute each library's documented function with our recurrent references; the documents'
seq_idx / cu_seqlens; the deterministic prefix sum; the causal conv with documents. The real kernels
need a GPU: tests/model/mixer/kernel_parity.py compares them there."""

import pytest
import torch
import torch.nn.functional as F

from train.model import build_model
from train.model.documents import Documents
from train.model.kv_cache import KVCache
from train.model.mixer import kernels
from train.model.mixer.causal_conv import CausalConv1d
from train.model.mixer.delta_rule import recurrent_delta_rule
from train.model.mixer.linear_scan import chunk_masks, prefix_sum, recurrent_linear_attention
from tests.model.mixer.test_linear_and_latent import random_model

DOC_IDS = torch.tensor([[0] * 7 + [1] + [2] * 22, [0] * 30])
LINEAR = ["gated_deltanet_only", "mamba2"]


def test_documents_give_seq_idx_and_cu_seqlens():
    documents = Documents(torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0], [4, 4, 7, 4, 4, 4]]))
    assert documents.seq_idx_BT.dtype == torch.int32
    assert documents.seq_idx_BT.tolist() == [[0, 0, 0, 1, 1, 2], [0] * 6, [0, 0, 1, 2, 2, 2]]  # counted from the starts
    assert documents.cu_seqlens.dtype == torch.int64
    assert documents.cu_seqlens.tolist() == [0, 3, 5, 6, 12, 14, 15, 18]


def test_selection_falls_back_to_torch(monkeypatch):
    x = torch.zeros(2, 3, dtype=torch.bfloat16)
    monkeypatch.setattr(kernels, "chunk_gated_delta_rule", lambda *args, **kwargs: None)  # "installed"
    assert kernels.available()["fla"]
    assert not kernels.runs("auto", "fla", x)  # on the CPU
    assert not kernels.runs("torch", "fla", x)
    monkeypatch.setattr(kernels, "chunk_gated_delta_rule", None)  # not installed
    assert not kernels.available()["fla"] and not kernels.runs("auto", "fla", x)
    with pytest.raises(ValueError, match="model.linear_kernels='triton'"):
        build_model("mamba2_tiny", linear_kernels="triton")


def fake_chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    """fla's documented function: q, k [B, T, H, K], v [B, T, H, V], g (log space) and beta [B, T, H];
    with cu_seqlens, B = 1 and the state restarts at each boundary."""
    B, T, H, K = q.shape
    assert k.shape == q.shape and v.shape[:3] == g.shape == beta.shape == (B, T, H)
    assert q.dtype == k.dtype == v.dtype and g.dtype == torch.float32 and use_qk_l2norm_in_kernel
    if cu_seqlens is not None:
        assert B == 1 and cu_seqlens.dtype == torch.int64 and cu_seqlens[-1] == T and initial_state is None
    q, k = F.normalize(q.float(), dim=-1, eps=1e-6) * scale, F.normalize(k.float(), dim=-1, eps=1e-6)
    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(B)]
    else:
        spans = [(0, s, e) for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())]
    ys, states = [], []
    for b, s, e in spans:
        part = [t[b : b + 1, s:e].transpose(1, 2) for t in (q, k, v, g, beta)]
        y, state = recurrent_delta_rule(*part, None, None if initial_state is None else initial_state[b : b + 1])
        ys.append(y.transpose(1, 2))
        states.append(state)
    y = torch.cat(ys, dim=1 if cu_seqlens is not None else 0)
    return y.to(v.dtype), torch.cat(states) if output_final_state else None


def fake_mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                   seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False):
    """mamba_ssm's documented function: x [b, l, h, p], dt [b, l, h], A [h], B, C [b, l, g, n] (head h reads
    group h // (h/g)), D [h], dt = clamp(softplus(dt + dt_bias)), state [b, h, p, n], seq_idx [b, l]."""
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    assert dt.shape == (b, l, h) and A.shape == (h,) and B.shape == C.shape == (b, l, g, n) and D.shape == (h,)
    assert z is None and dt_softplus and chunk_size > 0
    dt = F.softplus(dt.float() + dt_bias.float()).clamp(*dt_limit)
    reset = None
    if seq_idx is not None:
        assert seq_idx.dtype == torch.int32 and seq_idx.shape == (b, l) and initial_states is None
        reset = F.pad(seq_idx[:, 1:] != seq_idx[:, :-1], (1, 0))
    heads = lambda t: t.float().repeat_interleave(h // g, dim=2).transpose(1, 2)  # noqa: E731
    dt_bhl = dt.transpose(1, 2)
    y, state = recurrent_linear_attention(heads(C), heads(B) * dt_bhl[..., None], x.float().transpose(1, 2), dt_bhl * A[:, None],
                                          reset, None if initial_states is None else initial_states.transpose(-1, -2))
    y = (y.transpose(1, 2) + D.float()[:, None] * x.float()).to(x.dtype)
    return (y, state.transpose(-1, -2)) if return_final_states else y


def fake_causal_conv1d_fn(x, weight, bias=None, seq_idx=None, activation=None):
    """causal_conv1d's documented function: x [b, d, l] (channel-last with seq_idx), weight [d, w], silu,
    each seq_idx run convolved alone with zero left-padding."""
    b, d, l = x.shape
    assert weight.shape[0] == d and activation == "silu"
    if seq_idx is None:
        seq_idx = torch.zeros(b, l, dtype=torch.int32)
    assert seq_idx.dtype == torch.int32 and x.stride(1) == 1
    out = torch.empty_like(x)
    for row in range(b):
        _, lengths = torch.unique_consecutive(seq_idx[row], return_counts=True)
        start = 0
        for length in lengths.tolist():
            part = x[row : row + 1, :, start : start + length]
            out[row, :, start : start + length] = F.conv1d(part, weight[:, None], bias, padding=weight.shape[1] - 1, groups=d)[0, :, :length]
            start += length
    return F.silu(out)


@pytest.fixture
def fake_libraries(monkeypatch):
    """The three libraries replaced by the fakes, counting calls, and taken wherever `auto` is set."""
    calls = {"fla": 0, "mamba_ssm": 0, "causal_conv1d": 0}

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(kernels, "chunk_gated_delta_rule", counted("fla", fake_chunk_gated_delta_rule))
    monkeypatch.setattr(kernels, "mamba_chunk_scan_combined", counted("mamba_ssm", fake_mamba_chunk_scan_combined))
    monkeypatch.setattr(kernels, "causal_conv1d_fn", counted("causal_conv1d", fake_causal_conv1d_fn))
    monkeypatch.setattr(kernels, "runs", lambda choice, library, x: choice == "auto")  # the CPU stands in for CUDA
    return calls


def set_linear_kernels(mixer, choice):
    for module in mixer.modules():
        if hasattr(module, "linear_kernels"):
            module.linear_kernels = choice


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("with_documents", [True, False])
def test_library_layouts_round_trip(name, with_documents, fake_libraries):
    """The kernel path through the fakes equals the PyTorch path: output and gradients."""
    mixer = random_model(name).layers[0].mixer
    documents = Documents(DOC_IDS) if with_documents else None
    results = {}
    for choice in ("torch", "auto"):
        set_linear_kernels(mixer, choice)
        mixer.zero_grad()
        x_BTD = torch.randn(2, 30, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
        out_BTD = mixer(x_BTD, None, documents)
        (out_BTD * torch.linspace(-1, 1, 64)).sum().backward()
        results[choice] = [out_BTD, x_BTD.grad] + [p.grad.clone() for p in mixer.parameters()]
    library = "fla" if name.startswith("gated_deltanet") else "mamba_ssm"
    assert fake_libraries[library] == 1 and fake_libraries["causal_conv1d"] == 1
    for ours, theirs in zip(results["torch"], results["auto"]):
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", LINEAR)
def test_library_final_states_map_to_our_cache(name, fake_libraries):
    """A prefill through the kernels leaves the same conv and scan states as through PyTorch."""
    mixer = random_model(name).layers[0].mixer
    x_BTD = torch.randn(2, 13, 64)
    caches = {}
    with torch.no_grad():
        for choice in ("torch", "auto"):
            set_linear_kernels(mixer, choice)
            caches[choice] = KVCache(max_len=16)
            mixer(x_BTD, None, None, caches[choice])
    assert fake_libraries["causal_conv1d"] == 1
    for key in ("conv", "recurrent"):
        torch.testing.assert_close(caches["auto"].get_state(0, key), caches["torch"].get_state(0, key), atol=1e-5, rtol=1e-5)


def test_prefix_sum_equals_cumsum():
    for n in (1, 7, 64, 256):
        g_BHN = -torch.rand(2, 3, n, dtype=torch.float64)
        torch.testing.assert_close(prefix_sum(g_BHN.float()), g_BHN.cumsum(-1).float(), atol=1e-5, rtol=1e-6)


@pytest.fixture
def float_cumsum_raises(monkeypatch):
    """torch.cumsum / Tensor.cumsum raise on floats (CUDA's have no deterministic implementation);
    deterministic algorithms on for the test."""
    def refusing(original):
        def cumsum(x, *args, **kwargs):
            if x.is_floating_point():
                raise AssertionError("float cumsum in a deterministic code path")
            return original(x, *args, **kwargs)
        return cumsum

    monkeypatch.setattr(torch, "cumsum", refusing(torch.cumsum))
    monkeypatch.setattr(torch.Tensor, "cumsum", refusing(torch.Tensor.cumsum))
    with pytest.raises(AssertionError):
        torch.ones(3).cumsum(0)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("name", ["linear_attention", "gated_deltanet_only", "mamba2"])
def test_chunked_scans_use_no_float_cumsum(name, float_cumsum_raises):
    mixer = random_model(name).layers[0].mixer.train()
    x_BTD = torch.randn(2, 30, 64, requires_grad=True)
    mixer(x_BTD, None, Documents(DOC_IDS)).square().sum().backward()
    assert x_BTD.grad.abs().sum() > 0
    log_decay_BHT = -torch.rand(2, 3, 37)
    reset_BT = torch.zeros(2, 37, dtype=torch.bool)
    reset_BT[0, 5] = True
    chunk_masks(log_decay_BHT, reset_BT, 37, 8, 2, 3, log_decay_BHT.device)


def conv_by_unfold(conv, x_BTC, doc_ids_BT):
    """The former naive form: every window [B, C, T, K], taps from another document zeroed."""
    K = conv.kernel_size[0]
    windows_BCTK = F.pad(x_BTC.transpose(1, 2), (K - 1, 0)).unfold(-1, K, 1)
    same_B1TK = (F.pad(doc_ids_BT, (K - 1, 0), value=-1).unfold(-1, K, 1) == doc_ids_BT[..., None])[:, None]
    y_BCT = torch.einsum("bctk,ck->bct", windows_BCTK * same_B1TK, conv.weight[:, 0]) + conv.bias[:, None]
    return F.silu(y_BCT).transpose(1, 2)


def test_causal_conv_with_documents_equals_unfold_and_documents_alone():
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4, bias=True, linear_kernels="torch")
    x_BTC = torch.randn(2, 30, 6)
    lengths = [5, 1, 2, 22]
    doc_ids_BT = torch.stack([torch.repeat_interleave(torch.arange(4), torch.tensor(lengths)), torch.zeros(30, dtype=torch.long)])
    with torch.no_grad():
        y_BTC, _ = conv(x_BTC, Documents(doc_ids_BT))
        torch.testing.assert_close(y_BTC, conv_by_unfold(conv, x_BTC, doc_ids_BT), atol=1e-6, rtol=1e-6)
        start = 0
        for length in lengths:
            torch.testing.assert_close(y_BTC[:1, start : start + length], conv(x_BTC[:1, start : start + length])[0], atol=1e-6, rtol=1e-6)
            start += length
        torch.testing.assert_close(y_BTC[1:], conv(x_BTC[1:])[0], atol=1e-6, rtol=1e-6)
