"""The fused chunked cross-entropy equals F.cross_entropy on the full logits, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from train.loss import IGNORE, cross_entropy_sum


@pytest.mark.parametrize("chunk", [7, 64, 1000])
@pytest.mark.parametrize("dtype,autocast,tol", [(torch.float32, False, 1e-5), (torch.bfloat16, False, 2e-2),
                                                (torch.float32, True, 2e-2)])  # fp32 weights, bf16 compute
def test_matches_full_cross_entropy(chunk, dtype, autocast, tol):
    torch.manual_seed(0)
    N, D, V = 50, 16, 97
    hidden = torch.randn(N, D, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, D, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    targets[::5] = IGNORE
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        loss = cross_entropy_sum(hidden, weight, targets, chunk)
    (loss * 0.5).backward()  # a non-unit upstream gradient must be applied
    assert hidden.grad.dtype == weight.grad.dtype == dtype

    h_ref = hidden.detach().float().requires_grad_()
    w_ref = weight.detach().float().requires_grad_()
    ref = F.cross_entropy(h_ref @ w_ref.T, targets, ignore_index=IGNORE, reduction="sum")
    (ref * 0.5).backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(hidden.grad.float(), h_ref.grad, rtol=tol * 10, atol=tol)
    torch.testing.assert_close(weight.grad.float(), w_ref.grad, rtol=tol * 10, atol=tol)


def test_no_grad_path_gives_the_same_value():
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(30, 8), torch.randn(40, 8), torch.randint(0, 40, (30,))
    with torch.no_grad():
        value = cross_entropy_sum(hidden, weight, targets, 8)
    torch.testing.assert_close(value, F.cross_entropy(hidden @ weight.T, targets, reduction="sum"))
