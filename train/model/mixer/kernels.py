"""The optional CUDA kernels of the linear mixers, imported here and nowhere else:

- fla (flash-linear-attention, github.com/fla-org/flash-linear-attention): `chunk_gated_delta_rule`,
  the chunked gated delta rule (Yang, Kautz & Hatamizadeh 2024, arXiv 2412.06464), documents through
  `cu_seqlens` over the flattened batch;
- mamba_ssm (github.com/state-spaces/mamba): `mamba_chunk_scan_combined`, Mamba2's SSD scan (Dao & Gu
  2024, arXiv 2405.21060, sec. 6), documents through `seq_idx`;
- causal_conv1d (github.com/Dao-AILab/causal-conv1d): `causal_conv1d_fn`, the depthwise causal conv +
  silu, documents through `seq_idx`.

`model.linear_kernels` picks them: auto runs a kernel where its library imports and the tensors are
CUDA half precision (fla refuses fp32; the kernels' internals are bf16/fp16 with fp32 accumulation), the
PyTorch code otherwise; torch always runs the PyTorch code (linear_scan.py, delta_rule.py,
causal_conv.py), which is also the reference the kernels are compared with
(tests/model/mixer/kernel_parity.py, on a GPU). The model imports and runs without any of these.
The wrappers below translate our layouts to the libraries' and back; their comments say which of our
tensors is which argument, checked against the PyTorch path line by line.
"""

import torch

try:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
except ImportError:
    chunk_gated_delta_rule = None
try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
except ImportError:
    mamba_chunk_scan_combined = None
try:
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None


def available() -> dict:
    """Which libraries imported, by name."""
    return {"fla": chunk_gated_delta_rule is not None, "mamba_ssm": mamba_chunk_scan_combined is not None,
            "causal_conv1d": causal_conv1d_fn is not None}


def runs(choice: str, library: str, x: torch.Tensor) -> bool:
    """True when `library`'s kernel takes tensors like x under model.linear_kernels=choice."""
    return choice == "auto" and available()[library] and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)


def conv_runs(choice: str, x_BTC: torch.Tensor, width: int) -> bool:
    """causal_conv1d with seq_idx needs the channel-last layout, whose CUDA checks want channels and
    strides divisible by 8 and a width of 2..4; other shapes stay in PyTorch."""
    return runs(choice, "causal_conv1d", x_BTC) and x_BTC.shape[-1] % 8 == 0 and 2 <= width <= 4


# the wrappers are opaque to torch.compile: the libraries' Triton / CUDA launchers are no registered ops
# (fla's own entry point is @torch.compiler.disable too), so a compiled block breaks its graph here

@torch.compiler.disable
def causal_conv(x_BTC, weight_CK, bias_C, documents) -> torch.Tensor:
    """silu(causal depthwise conv(x)) [B, T, C] as CausalConv1d.forward with a zero initial state.
    x_BTC.transpose(1, 2) is the channel-last x [b, d, l] the kernel wants with seq_idx; weight [d, w]
    is our conv weight [C, 1, K] without its middle dim (tap k multiplies input t - (K-1) + k, as
    F.conv1d); seq_idx [b, l] int32 zeroes the taps that reach into another document (our per-tap
    same-document mask)."""
    seq_idx_BT = None if documents is None else documents.seq_idx_BT
    y_BCT = causal_conv1d_fn(x_BTC.contiguous().transpose(1, 2), weight_CK, bias_C, seq_idx=seq_idx_BT, activation="silu")
    return y_BCT.transpose(1, 2)


@torch.compiler.disable
def gated_delta_rule(q_BTHK, k_BTHK, v_BTHV, log_decay_BTH, beta_BTH, documents, state_BHKV, output_final_state: bool):
    """Gated DeltaNet's scan by fla, as GatedDeltaNet's PyTorch path computes it: returns y [B, T, H, V]
    (v's dtype) and the final state [B, H, K, V] (fp32) or None.

    q, k arrive before the L2 norm and the K^-1/2 scale (repeated to the value heads, as transformers'
    Qwen3-Next does before calling the same kernel): use_qk_l2norm_in_kernel=True is fla's l2norm,
    x * rsqrt(sum x^2 + 1e-6) in fp32, the eps of our l2_normalize; scale = K^-1/2 multiplies q inside.
    g = our log decay -exp(A_log) * softplus(a + dt_bias) [B, T, H] (fla's gate is in log space, fp32
    here), beta = sigmoid(b) [B, T, H]; fla's layout [B, T, H, *] is ours before the transpose to
    [B, H, T, *]. Its state [N, H, K, V] is our S (y_t = S_t^T q_t). With documents the batch flattens
    to B = 1 and cu_seqlens [N+1] (Documents.cu_seqlens, row after row) restarts the state at each
    document, our reset_BT; documents never come with a state (check_no_documents_with_cache)."""
    B, T, H, _ = q_BTHK.shape
    cu_seqlens = None if documents is None else documents.cu_seqlens
    if cu_seqlens is not None:
        q_BTHK, k_BTHK, v_BTHV, log_decay_BTH, beta_BTH = (x.flatten(0, 1)[None] for x in (q_BTHK, k_BTHK, v_BTHV, log_decay_BTH, beta_BTH))
    y_BTHV, final_BHKV = chunk_gated_delta_rule(
        q_BTHK, k_BTHK, v_BTHV, log_decay_BTH.float(), beta_BTH.to(q_BTHK.dtype), scale=q_BTHK.shape[-1] ** -0.5,
        initial_state=state_BHKV, output_final_state=output_final_state, use_qk_l2norm_in_kernel=True,
        cu_seqlens=cu_seqlens)
    return y_BTHV.view(B, T, H, -1), final_BHKV


@torch.compiler.disable
def ssd(x_BTHP, dt_BTH, A_H, B_BTGN, C_BTGN, D_H, dt_bias_H, dt_limit, chunk_size: int, documents, state_BHNP,
        return_final_states: bool):
    """Mamba2's SSD scan by mamba_ssm, as Mamba2's PyTorch path computes it before the gated norm: returns
    y + D x [B, T, H, P] (x's dtype) and the final state [B, H, N, P] (our layout) or None.

    Arguments: x = our x (the value v of linear_scan); dt = the raw dt slice of in_proj, with
    dt_bias, dt_softplus=True and dt_limit=(dt_limit_min, dt_limit_max): the kernel's
    clamp(softplus(dt + dt_bias)) is our dt (softplus linear above 20 in both); A = -exp(A_log) [H]
    (the log decay dt A); B, C [B, T, G, N] ungrouped (head h reads group h // (H/G), our
    repeat_interleave), B is our k / dt and C our q; D [H] the skip, added inside as our y + D x;
    z=None: the gate stays in our GatedRMSNorm (norm before gate = False, as mamba_ssm's Mamba2 module
    also keeps it outside the scan). seq_idx [B, T] int32 (Documents.seq_idx_BT) resets the state at
    document starts. The kernel's states are [B, H, P, N], ours [B, H, N, P] (S_t^T q_t reads
    h_t C_t): transposed both ways."""
    seq_idx_BT = None if documents is None else documents.seq_idx_BT
    initial_BHPN = None if state_BHNP is None else state_BHNP.transpose(-1, -2).contiguous()
    out = mamba_chunk_scan_combined(
        x_BTHP, dt_BTH, A_H, B_BTGN, C_BTGN, chunk_size, D=D_H, z=None, dt_bias=dt_bias_H, initial_states=initial_BHPN,
        seq_idx=seq_idx_BT, dt_softplus=True, dt_limit=dt_limit, return_final_states=return_final_states)
    if not return_final_states:
        return out, None
    y_BTHP, final_BHPN = out
    return y_BTHP, final_BHPN.transpose(-1, -2)
