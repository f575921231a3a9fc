"""The gated delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks", arXiv 2412.06464):

    S_t = a_t S_{t-1} + beta_t k_t (v_t - (a_t S_{t-1})^T k_t)^T,     y_t = S_t^T q_t

i.e. decay the state, then move the value it stores under key k_t toward v_t with step beta_t.
Two forms that agree, written to match transformers' torch fallbacks for Qwen3-Next
(`torch_recurrent_gated_delta_rule` / `torch_chunk_gated_delta_rule`):
- `recurrent_delta_rule`: token by token (decoding, and the naive reference);
- `chunked_delta_rule`: chunkwise parallel via the WY/UT transform (Yang et al. 2024, "Parallelizing
  Linear Transformers with the Delta Rule", arXiv 2406.06484, sec. 3): inside a chunk the updates
  u = (I + tril(diag(beta) K K^T * decay, -1))^-1 (beta V - beta K exp(cum) S) come from one
  triangular solve, then a scan over chunk states.
q and k arrive L2-normalised, q already scaled by K^-1/2. `reset_BT` zeroes the state at
document starts (as in linear_scan.py). Shapes: q, k [B, H, T, K], v [B, H, T, V], log_decay and
beta [B, H, T], state [B, H, K, V]; computed in fp32.
"""

import torch
import torch.nn.functional as F

from train.model.mixer.linear_scan import chunk_masks, chunks
from train.model.precision import computes_in_fp32


@computes_in_fp32
def recurrent_delta_rule(q_BHTK, k_BHTK, v_BHTV, log_decay_BHT, beta_BHT, reset_BT=None, state_BHKV=None):
    B, H, T, K = q_BHTK.shape
    q_BHTK, k_BHTK, v_BHTV, beta_BHT = q_BHTK.float(), k_BHTK.float(), v_BHTV.float(), beta_BHT.float()
    S_BHKV = q_BHTK.new_zeros(B, H, K, v_BHTV.shape[-1]) if state_BHKV is None else state_BHKV.float()
    ys = []
    for t in range(T):
        S_BHKV = S_BHKV * log_decay_BHT[:, :, t, None, None].float().exp()
        if reset_BT is not None:
            S_BHKV = S_BHKV * (~reset_BT[:, t]).float()[:, None, None, None]
        k_BHK = k_BHTK[:, :, t]
        stored_BHV = torch.einsum("bhkv,bhk->bhv", S_BHKV, k_BHK)
        delta_BHV = (v_BHTV[:, :, t] - stored_BHV) * beta_BHT[:, :, t, None]
        S_BHKV = S_BHKV + k_BHK[..., None] * delta_BHV[..., None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q_BHTK[:, :, t], S_BHKV))
    return torch.stack(ys, dim=2), S_BHKV


@computes_in_fp32
def chunked_delta_rule(q_BHTK, k_BHTK, v_BHTV, log_decay_BHT, beta_BHT, reset_BT=None, state_BHKV=None, chunk: int = 64):
    B, H, T, K = q_BHTK.shape
    V = v_BHTV.shape[-1]
    pair, from_start, to_end, chunk_decay, pad = chunk_masks(log_decay_BHT, reset_BT, T, chunk, B, H, q_BHTK.device)
    q, k, v = (F.pad(x.float(), (0, 0, 0, pad)).unflatten(2, (-1, chunk)) for x in (q_BHTK, k_BHTK, v_BHTV))
    beta = F.pad(beta_BHT.float(), (0, pad)).unflatten(2, (-1, chunk))[..., None]
    k_beta, v_beta = k * beta, v * beta
    # UT transform: (I + A) u = v_beta - (k_beta * exp(cum)) S_prev with A strictly lower triangular
    ut_BHNCC = (k_beta @ k.transpose(-1, -2)) * pair
    u_BHNCV = torch.linalg.solve_triangular(ut_BHNCC, v_beta, upper=False, unitriangular=True)
    w_BHNCK = torch.linalg.solve_triangular(ut_BHNCC, k_beta * from_start[..., None], upper=False, unitriangular=True)
    intra_BHNCC = (q @ k.transpose(-1, -2)) * pair
    q_from_start, k_to_end = q * from_start[..., None], k * to_end[..., None]
    S_BHKV = q.new_zeros(B, H, K, V) if state_BHKV is None else state_BHKV.float()
    ys = []
    for u_BHCV, w_BHCK, q_BHCK, intra_BHCC, k_BHCK, decay_BH in chunks(u_BHNCV, w_BHNCK, q_from_start, intra_BHNCC, k_to_end,
                                                                      chunk_decay):
        u_new = u_BHCV - w_BHCK @ S_BHKV
        ys.append(q_BHCK @ S_BHKV + intra_BHCC @ u_new)
        S_BHKV = S_BHKV * decay_BH[..., None, None] + k_BHCK.transpose(-1, -2) @ u_new
    return torch.cat(ys, dim=2)[:, :, :T], S_BHKV
