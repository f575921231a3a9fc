"""Gated causal linear attention, S_t = a_t S_{t-1} + k_t v_t^T, y_t = S_t^T q_t, in two forms:

- `recurrent_linear_attention`: one token at a time (decoding; the naive reference);
- `chunked_linear_attention`: the chunkwise-parallel form for training (Yang et al. 2023, "Gated
  Linear Attention", arXiv 2312.06635, sec. 3; Dao & Gu 2024, "Transformers are SSMs", arXiv
  2405.21060, sec. 6, the SSD algorithm): inside a chunk of C tokens a masked (q k^T * decay) v
  product, across chunks a scan over the states. O(T * C) work instead of O(T^2).

a_t = exp(log_decay_t) (None: a_t = 1, plain linear attention, Katharopoulos et al. 2020). Mamba2's
SSD is this with q = C, k = dt * B, v = x, log a = dt * A. `reset_BT` (True at a document start)
sets a_t = 0 so no state crosses documents; the chunked form applies it as masks (a log decay of
-inf would give inf - inf). Shapes: q, k [B, H, T, K], v [B, H, T, V], log_decay [B, H, T],
state [B, H, K, V]; all computed in fp32. No float cumsum: torch.cumsum of CUDA floats raises under
torch.use_deterministic_algorithms(True), so the in-chunk cumulative log decay is `prefix_sum`.
On CUDA with fla / mamba_ssm installed the mixers run those libraries' kernels instead (kernels.py);
this file is the fallback and the reference.

`scan_window` runs a scan of either form (or the delta rule's) over a forward's documents; a split
sequence (context parallelism) is scanned whole, each device taking a share of the heads.
"""

import torch
import torch.nn.functional as F

from train.model.documents import Documents, is_split
from train.model.precision import computes_in_fp32


@computes_in_fp32
def recurrent_linear_attention(q_BHTK, k_BHTK, v_BHTV, log_decay_BHT=None, reset_BT=None, state_BHKV=None):
    B, H, T, K = q_BHTK.shape
    q_BHTK, k_BHTK, v_BHTV = q_BHTK.float(), k_BHTK.float(), v_BHTV.float()
    S_BHKV = q_BHTK.new_zeros(B, H, K, v_BHTV.shape[-1]) if state_BHKV is None else state_BHKV.float()
    ys = []
    for t in range(T):
        if log_decay_BHT is not None:
            S_BHKV = S_BHKV * log_decay_BHT[:, :, t, None, None].float().exp()
        if reset_BT is not None:
            S_BHKV = S_BHKV * (~reset_BT[:, t]).float()[:, None, None, None]
        S_BHKV = S_BHKV + k_BHTK[:, :, t, :, None] * v_BHTV[:, :, t, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q_BHTK[:, :, t], S_BHKV))
    return torch.stack(ys, dim=2), S_BHKV


def prefix_sum(x: torch.Tensor) -> torch.Tensor:
    """Inclusive prefix sum over the last dim by doubling (Hillis & Steele 1986, "Data parallel
    algorithms"): ceil(log2 n) shifted adds, deterministic on every device and equal to cumsum within
    fp32 rounding. Not a matmul with a triangular ones matrix: under TF32 matmuls (CUDA) that would
    round the cumulative log decays to 10 mantissa bits, and exp(cum_i - cum_j) with them."""
    n, shift = x.shape[-1], 1
    while shift < n:
        x = x + F.pad(x[..., :-shift], (shift, 0))
        shift *= 2
    return x


def chunk_masks(log_decay_BHT, reset_BT, T: int, chunk: int, B: int, H: int, device):
    """Per-chunk decay factors with document resets, shared with the delta rule.
    cum is the in-chunk cumulative log decay. Returns (pair decay exp(cum_i - cum_j) [B,H,N,C,C] (0
    above the diagonal and across documents), from_start [B,H,N,C] = exp(cum_i) if no reset since the chunk start else 0,
    to_end [B,H,N,C] = exp(cum_last - cum_j) if no reset after j, chunk_decay [B,H,N])."""
    pad = (chunk - T % chunk) % chunk
    N = (T + pad) // chunk
    g = torch.zeros(B, H, T, device=device) if log_decay_BHT is None else log_decay_BHT.float()
    cum_BHNC = prefix_sum(F.pad(g, (0, pad)).view(B, H, N, chunk))
    causal_CC = torch.ones(chunk, chunk, dtype=torch.bool, device=device).tril()
    if reset_BT is None:
        seg_BHNC = torch.zeros(1, 1, N, chunk, dtype=torch.long, device=device)
    else:
        seg_BHNC = F.pad(reset_BT.long(), (0, pad)).view(B, 1, N, chunk).cumsum(-1)  # resets since chunk start (integer: deterministic)
    same_BHNCC = causal_CC & (seg_BHNC[..., :, None] == seg_BHNC[..., None, :])
    diff_BHNCC = (cum_BHNC[..., :, None] - cum_BHNC[..., None, :]).masked_fill(~same_BHNCC, float("-inf"))
    pair_BHNCC = diff_BHNCC.exp()
    from_start_BHNC = cum_BHNC.exp() * (seg_BHNC == 0)
    to_end_BHNC = (cum_BHNC[..., -1:] - cum_BHNC).exp() * (seg_BHNC == seg_BHNC[..., -1:])
    chunk_decay_BHN = cum_BHNC[..., -1].exp() * (seg_BHNC[..., -1] == 0)
    return pair_BHNCC, from_start_BHNC, to_end_BHNC, chunk_decay_BHN, pad


def chunks(*tensors_BHN):
    """Each chunk's slices of tensors [B, H, N, ...], one tuple per chunk n. By unbind, not x[:, :, n]: the
    backward of N such selects adds N gradients of the whole tensor, zero but for one chunk (O(T^2) work
    per scan); unbind's backward stacks the N chunk gradients once."""
    return zip(*(x.unbind(2) for x in tensors_BHN))


@computes_in_fp32
def chunked_linear_attention(q_BHTK, k_BHTK, v_BHTV, log_decay_BHT=None, reset_BT=None, state_BHKV=None, chunk: int = 64):
    B, H, T, K = q_BHTK.shape
    V = v_BHTV.shape[-1]
    pair, from_start, to_end, chunk_decay, pad = chunk_masks(log_decay_BHT, reset_BT, T, chunk, B, H, q_BHTK.device)
    q, k, v = (F.pad(x.float(), (0, 0, 0, pad)).unflatten(2, (-1, chunk)) for x in (q_BHTK, k_BHTK, v_BHTV))
    y_intra_BHNCV = ((q @ k.transpose(-1, -2)) * pair) @ v
    q_from_start, k_to_end = q * from_start[..., None], k * to_end[..., None]
    S_BHKV = q.new_zeros(B, H, K, V) if state_BHKV is None else state_BHKV.float()
    ys = []
    for y_intra_BHCV, q_BHCK, k_BHCK, v_BHCV, decay_BH in chunks(y_intra_BHNCV, q_from_start, k_to_end, v, chunk_decay):
        ys.append(y_intra_BHCV + q_BHCK @ S_BHKV)  # the scan over chunk states
        S_BHKV = S_BHKV * decay_BH[..., None, None] + k_BHCK.transpose(-1, -2) @ v_BHCV
    return torch.cat(ys, dim=2)[:, :, :T], S_BHKV


def scan_window(scan, documents: Documents | None, *inputs, state=None):
    """scan(*inputs, reset_BT, state) -> (y [B, H, T, V], final state) over this forward's tokens, reset at
    its document starts. `inputs` are per-head tensors [B, H, T, ...] (or None). For a split sequence
    (context parallelism) the scan runs over the whole window instead, in window order, on this device's
    share of the heads: the split exchanges the inputs (`to_heads`, an all-to-all) and the outputs back
    (`to_tokens`), so the state runs through the window exactly as on one device, with no state passed
    between devices (the all-to-all form of Megatron-LM's context parallelism for Mamba). Heads are
    independent, so the result is the unsplit scan's. A split sequence never carries a decoding state."""
    if not is_split(documents):
        return scan(*inputs, None if documents is None else documents.resets_BT, state)
    split = documents.split
    heads = [None if x is None else split.to_heads(x) for x in inputs]
    y_BhLV, _ = scan(*heads, documents.window.resets_BT, None)
    return split.to_tokens(y_BhLV), None
