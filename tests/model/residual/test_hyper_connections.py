"""Hyper-connections against the paper's equations written out token by token (arXiv 2409.19606 eq. 1-5 and
10-13), manifold-constrained ones against transformers' DeepSeek-V4 modules, and whole models."""

from types import SimpleNamespace

import pytest
import torch
from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection, DeepseekV4HyperHead

from train.model import build_model
from train.model.config import NormConfig
from train.model.residual.hyper_connections import HyperConnection
from train.model.residual.manifold_hyper_connections import ManifoldHyperConnection, ManifoldHyperHead, sinkhorn

N, D = 3, 8


def sublayer(h):
    return torch.tanh(h) * 2.0 + 0.1


def randomised(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module.double()


def naive_hc(hc, H_BTnD):
    """Per token: the (n+1) x (n+1) matrix HC = [[0, B], [A_m, A_r]] (dynamic: each offset by
    s * tanh(norm(H) W)), then h0 = A_m^T H, H' = B^T T(h0) + A_r^T H."""
    out = torch.empty_like(H_BTnD)
    for b in range(H_BTnD.shape[0]):
        for t in range(H_BTnD.shape[1]):
            H = H_BTnD[b, t]
            A_m, A_r, B = hc.static_alpha[:, :1], hc.static_alpha[:, 1:], hc.static_beta[None, :]
            if hc.norm is not None:
                Hn = hc.norm(H)
                A_m = A_m + hc.dynamic_alpha_scale * torch.tanh(Hn @ hc.dynamic_alpha_fn[:, :1])
                A_r = A_r + hc.dynamic_alpha_scale * torch.tanh(Hn @ hc.dynamic_alpha_fn[:, 1:])
                B = B + hc.dynamic_beta_scale * torch.tanh(Hn @ hc.dynamic_beta_fn[:, None]).T
            matrix = torch.cat([torch.cat([torch.zeros(1, 1, dtype=H.dtype), B], 1), torch.cat([A_m, A_r], 1)], 0)
            h0 = matrix[1:, :1].T @ H  # A_m^T H: [1, D]
            out[b, t] = matrix[:1, 1:].T @ sublayer(h0) + matrix[1:, 1:].T @ H
    return out


@pytest.mark.parametrize("dynamic", [False, True])
def test_hyper_connection_is_the_papers_matrix(dynamic):
    hc = randomised(HyperConnection(N, D, sublayer=4, dynamic=dynamic, norm=NormConfig()))
    H = torch.randn(2, 3, N, D, dtype=torch.float64)
    torch.testing.assert_close(hc(H, sublayer), naive_hc(hc, H))


def test_hyper_connection_init_is_a_residual_on_stream_k_mod_n():
    hc = HyperConnection(N, D, sublayer=4, dynamic=True, norm=NormConfig())
    H = torch.randn(2, 3, N, D)
    seen = []
    out = hc(H, lambda h: seen.append(h) or sublayer(h))
    torch.testing.assert_close(seen[0], H[:, :, 4 % N])  # A_m = e_{k mod n}
    torch.testing.assert_close(out, H + sublayer(H[:, :, 1])[:, :, None])  # A_r = I, B = ones


def v4_config():
    return SimpleNamespace(hc_mult=N, hc_sinkhorn_iters=20, hc_eps=1e-6, rms_norm_eps=1e-5, hidden_size=D)


def test_manifold_hyper_connection_matches_deepseek_v4():
    # both compute the weights in fp32 whatever the input's dtype: compare in fp32
    ours = randomised(ManifoldHyperConnection(N, D, sinkhorn_iters=20, eps=1e-6, norm_eps=1e-5, init_std=0.02)).float()
    theirs = DeepseekV4HyperConnection(v4_config())
    theirs.load_state_dict(ours.state_dict())
    H = torch.randn(2, 5, N, D)
    post, comb, collapsed = theirs(H)  # DeepseekV4DecoderLayer: post * f(collapsed) + comb^T H
    expected = post.unsqueeze(-1) * sublayer(collapsed).unsqueeze(-2) + comb.transpose(-1, -2) @ H
    torch.testing.assert_close(ours(H, sublayer), expected, atol=1e-5, rtol=1e-5)
    head = randomised(ManifoldHyperHead(N, D, eps=1e-6, norm_eps=1e-5, init_std=0.02)).float()
    their_head = DeepseekV4HyperHead(v4_config())
    their_head.load_state_dict(head.state_dict())
    torch.testing.assert_close(head(H), their_head(H), atol=1e-5, rtol=1e-5)


def test_sinkhorn_makes_the_mixing_doubly_stochastic():
    """The last step normalises the columns (up to eps); after 20 iterations the rows are within 1e-3 (finite
    Sinkhorn-Knopp is approximate, as mHC-lite, arXiv 2601.05732, points out)."""
    comb = torch.softmax(torch.randn(4, 5, 5, dtype=torch.float64), dim=-1) + 1e-6
    projected = sinkhorn(comb, 20, 1e-6)
    torch.testing.assert_close(projected.sum(-1), torch.ones(4, 5, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(projected.sum(-2), torch.ones(4, 5, dtype=torch.float64), atol=1e-5, rtol=0)  # (the eps)
    assert (projected > 0).all()


def test_one_static_stream_is_the_plain_residual():
    torch.manual_seed(0)
    plain = build_model("llama3_tiny").eval()
    one = build_model("llama3_tiny", **{"residual.hyper_connections.kind": "static",
                                         "residual.hyper_connections.streams": 1}).eval()
    missing, unexpected = one.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("connection" in name for name in missing)
    ids = torch.randint(0, 8192, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(one(ids), plain(ids))


@pytest.mark.parametrize("kind", ["static", "dynamic", "manifold"])
def test_hyper_connection_models_carry_streams_and_decode(kind):
    from tests.model_helpers import assert_cached_decoding_equals_full

    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.2, **{"residual.hyper_connections.kind": kind}).eval()
    assert model.layers[0].mixer_connection is not None and model.stream_head is not None
    assert_cached_decoding_equals_full(model, torch.randint(0, 8192, (2, 10)), prompt=6, tolerance=1e-4)
