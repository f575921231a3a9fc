"""What computes in fp32 on purpose stays fp32 under torch.autocast (one process's bf16 training): the
recurrent scans, the router's logits and the hyper-connections' head give exactly their results without it."""

import torch

from train.model import build_model
from train.model.mixer.delta_rule import chunked_delta_rule, recurrent_delta_rule
from train.model.mixer.linear_scan import chunked_linear_attention, recurrent_linear_attention
from train.model.residual.manifold_hyper_connections import ManifoldHyperHead


def same_under_autocast(fn, *args):
    expected = fn(*args)
    with torch.autocast("cpu", torch.bfloat16):
        got = fn(*args)
    for e, g in zip(*(x if isinstance(x, tuple) else (x,) for x in (expected, got))):
        assert g.dtype == e.dtype == torch.float32 and torch.equal(g, e)


def test_scans_compute_in_fp32_under_autocast():
    torch.manual_seed(0)
    B, H, T, K = 2, 2, 48, 16
    q, k, v = (torch.randn(B, H, T, K) for _ in range(3))
    log_decay, beta = -torch.rand(B, H, T), torch.rand(B, H, T)
    k = torch.nn.functional.normalize(k, dim=-1)
    for scan in (recurrent_delta_rule, lambda *a: chunked_delta_rule(*a, chunk=16)):
        same_under_autocast(scan, q / K**0.5, k, v, log_decay, beta)
    for scan in (recurrent_linear_attention, lambda *a: chunked_linear_attention(*a, chunk=16)):
        same_under_autocast(scan, q, k, v, log_decay)


def test_router_and_hyper_connections_compute_in_fp32_under_autocast():
    torch.manual_seed(0)
    router = build_model("qwen3_moe_tiny").moe_layers()[0].router
    x_BTD = torch.randn(2, 8, router.gate.weight.shape[1])
    same_under_autocast(lambda x: router(x)[0], x_BTD)  # the routing weights
    N, D = 4, 32
    H_BTnD = torch.randn(2, 8, N, D)
    same_under_autocast(ManifoldHyperHead(N, D, eps=1e-6, norm_eps=1e-5, init_std=0.5), H_BTnD)
