"""Softmax attention against a naive loop-free reference written from the definitions:
softmax(q k^T / sqrt(K) + mask) v, with GPT-OSS sinks as an extra softmax column."""

import math

import pytest
import torch

from train.model import build_model
from train.model.config import AttentionConfig, MixerConfig, ModelConfig, PositionConfig
from train.model.documents import Documents
from train.model.mixer.softmax_attention import SoftmaxAttention


def naive_attention(module: SoftmaxAttention, x_BTD, doc_ids_BT):
    B, T, _ = x_BTD.shape
    H, G, K = module.num_heads, module.num_kv_heads, module.head_dim
    q = module.q_proj(x_BTD).view(B, T, H, K).transpose(1, 2)
    k = module.k_proj(x_BTD).view(B, T, G, K).transpose(1, 2).repeat_interleave(H // G, dim=1)
    v = module.v_proj(x_BTD).view(B, T, G, K).transpose(1, 2).repeat_interleave(H // G, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(K)
    for b in range(B):
        for t in range(T):
            for s in range(T):
                visible = s <= t and doc_ids_BT[b, s] == doc_ids_BT[b, t]
                if module.window is not None:
                    visible = visible and t - s < module.window
                if not visible:
                    scores[b, :, t, s] = -math.inf
    logits = scores if module.sinks is None else torch.cat([scores, module.sinks.view(1, H, 1, 1).expand(B, H, T, 1)], -1)
    probs = torch.softmax(logits, dim=-1)[..., :T]
    out = probs @ v
    return module.o_proj(out.transpose(1, 2).reshape(B, T, H * K))


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("window, sinks", [(None, False), (3, False), (None, True), (4, True)])
def test_attention_matches_naive_reference(num_kv_heads, window, sinks):
    torch.manual_seed(0)
    model_config = ModelConfig(dim=32, position=PositionConfig(kind="none"))
    config = MixerConfig(attention=AttentionConfig(num_heads=4, num_kv_heads=num_kv_heads, window=window, sinks=sinks, qkv_bias=True))
    module = SoftmaxAttention(config, model_config, layer_idx=0)
    if sinks:
        torch.nn.init.normal_(module.sinks, std=2.0)
    x_BTD = torch.randn(2, 9, 32)
    doc_ids_BT = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    positions_BT = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        expected = naive_attention(module, x_BTD, doc_ids_BT)
        torch.testing.assert_close(module(x_BTD, positions_BT, Documents(doc_ids_BT)), expected, atol=1e-5, rtol=1e-5)
        if not sinks and window is None:  # the fused is_causal path, no documents
            torch.testing.assert_close(module(x_BTD[1:], positions_BT[1:]), expected[1:], atol=1e-5, rtol=1e-5)


def test_sinks_receive_gradient():
    model = build_model("llama3_tiny", **{"mixers.full.attention.sinks": True})
    model(torch.randint(0, 100, (1, 8))).logsumexp(-1).sum().backward()
    assert model.layers[0].mixer.sinks.grad.abs().sum() > 0


def test_bad_head_counts_name_the_keys():
    with pytest.raises(ValueError, match="num_kv_heads"):
        build_model("llama3_tiny", **{"mixers.full.attention.num_kv_heads": 3})
