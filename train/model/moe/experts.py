"""Routed experts as 3-D weights, run on tokens already sorted by expert.

Each expert is a GLU feed-forward (Shazeer 2020) down(act(gate(x)) * up(x)) with w1 (gate) [E, F, D],
w3 (up) [E, F, D] and w2 (down) [E, D, F], laid out as nn.Linear weights so that a Hugging Face
per-expert checkpoint stacks into them. With `swiglu_limit` the GLU is GPT-OSS's clamped SwiGLU
(transformers' GptOssExperts._apply_gate): g = min(gate, limit), u = clamp(up, -limit, limit),
(u + 1) * g * sigmoid(alpha * g).

The input is the routed (token, expert) pairs sorted by expert with `counts_E` rows per expert. The
three matmuls are grouped matmuls (`torch._grouped_mm`, one kernel over all experts, with the group
offsets on the device: no host sync; CPU in fp32 and bf16, CUDA in bf16) or, without it (fp32 on CUDA),
one matmul per expert over its contiguous slice, which needs the counts on the host: either way the
work is proportional to the routed tokens, never all experts x all tokens. Expert parallelism keeps
only some experts here (`num_experts` is then the local count) and feeds them the tokens it received.

On the CPU a bf16 matmul runs through oneDNN, which builds a kernel for each new shape (~1 ms, ten times
the matmul of a few hundred rows), and the routing changes every expert's row count every step. There the
MoE layer pads each expert's group to a multiple of CPU_BF16_ROWS (`group_multiple`, `padded_groups`) as it
gathers the routed tokens, so the shapes repeat and the built kernels are reused (3x faster experts; not
under torch.compile, whose graph would break on the padded size).
"""

import torch
import torch.nn.functional as F
from torch import nn

from train.model.ffn.activation import get_activation
from train.model.precision import autocast_dtype

CPU_BF16_ROWS = 32  # each expert's group is padded to a multiple of this many rows in bf16 on the CPU (module docstring)


def grouped_mm_available(x: torch.Tensor) -> bool:
    """torch._grouped_mm runs on CPU (fp32, bf16) and on CUDA in bf16; under torch.compile only in bf16
    (its compile-time kernel checks take CUDA's rule)."""
    cpu_eager = x.device.type == "cpu" and not torch.compiler.is_compiling()
    return hasattr(torch, "_grouped_mm") and (cpu_eager or x.dtype == torch.bfloat16)


def grouped_linear(x_ND: torch.Tensor, w_EOD: torch.Tensor, counts_E: torch.Tensor, grouped: bool,
                   b_EO: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of expert e (a contiguous slice, counts_E[e] long) times w_EOD[e]^T, plus b_EO[e]: [N, O]."""
    if grouped and grouped_mm_available(x_ND):
        out_NO = torch._grouped_mm(x_ND, w_EOD.transpose(-2, -1), offs=counts_E.cumsum(0).to(torch.int32))
        if out_NO.requires_grad:  # its backward rejects the stride-0 gradients of e.g. a sum
            out_NO.register_hook(torch.Tensor.contiguous)
    else:
        slices = x_ND.split(counts_E.tolist())
        out_NO = torch.cat([F.linear(x_nD, w_EOD[e]) for e, x_nD in enumerate(slices)]) if slices else x_ND.new_zeros(0, w_EOD.shape[1])
    if b_EO is None:
        return out_NO
    return out_NO + b_EO.repeat_interleave(counts_E, dim=0, output_size=x_ND.shape[0])


def group_multiple(x: torch.Tensor) -> int:
    """The multiple of rows each expert's group is padded to for experts fed `x` (computing in its autocast
    dtype, if any): CPU_BF16_ROWS in bf16 on the CPU outside torch.compile (module docstring), else 1."""
    dtype = autocast_dtype(x) or x.dtype
    cpu_bf16 = x.device.type == "cpu" and dtype == torch.bfloat16 and not torch.compiler.is_compiling()
    return CPU_BF16_ROWS if cpu_bf16 else 1


def padded_groups(counts_E: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows sorted by expert (counts_E[e] of expert e), each expert's count rounded up to `multiple` and
    the row each of them takes among the padded groups. CPU only: the total is read on the host."""
    padded_E = (counts_E + multiple - 1) // multiple * multiple
    N = int(counts_E.sum())
    expert_N = torch.repeat_interleave(torch.arange(len(counts_E)), counts_E, output_size=N)
    shift_E = (padded_E.cumsum(0) - padded_E) - (counts_E.cumsum(0) - counts_E)  # where each group moves to
    return padded_E, torch.arange(N) + shift_E[expert_N]


class RoutedExperts(nn.Module):
    def __init__(self, num_experts: int, dim: int, hidden_dim: int, activation: str, bias: bool,
                 swiglu_limit: float | None, swiglu_alpha: float, grouped_mm: bool, init_std: float, residual_std: float):
        super().__init__()
        E, D, F_ = num_experts, dim, hidden_dim
        self.num_experts, self.grouped_mm = num_experts, grouped_mm
        self.activation = get_activation(activation)
        self.swiglu_limit, self.swiglu_alpha = swiglu_limit, swiglu_alpha
        self.w1_EFD = nn.Parameter(torch.empty(E, F_, D))
        self.w3_EFD = nn.Parameter(torch.empty(E, F_, D))
        self.w2_EDF = nn.Parameter(torch.empty(E, D, F_))
        self.b1_EF = nn.Parameter(torch.empty(E, F_)) if bias else None
        self.b3_EF = nn.Parameter(torch.empty(E, F_)) if bias else None
        self.b2_ED = nn.Parameter(torch.empty(E, D)) if bias else None
        self.init_std, self.residual_std = init_std, residual_std

    def reset_extra_parameters(self) -> None:
        """Normal(init_std) for w1/w3, the residual std for w2 (like down_proj), zero biases."""
        for w, std in ((self.w1_EFD, self.init_std), (self.w3_EFD, self.init_std), (self.w2_EDF, self.residual_std)):
            nn.init.normal_(w, std=std)
        for b in (self.b1_EF, self.b3_EF, self.b2_ED):
            if b is not None:
                nn.init.zeros_(b)

    def forward(self, x_ND: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """x_ND: N routed rows sorted by expert, counts_E[e] of them for expert e."""
        if autocast_dtype(x_ND) is not None:  # torch._grouped_mm is no autocast op (torch 2.13): cast here
            x_ND = x_ND.to(autocast_dtype(x_ND))
        return self.glu(x_ND, counts_E)

    def glu(self, x_ND: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        # the weights in x's dtype: a no-op but under torch.autocast, whose cast of x (forward) they follow
        w1_EFD, w3_EFD, w2_EDF, b1_EF, b3_EF, b2_ED = (None if p is None else p.to(x_ND.dtype) for p in (
            self.w1_EFD, self.w3_EFD, self.w2_EDF, self.b1_EF, self.b3_EF, self.b2_ED))
        gate_NF = grouped_linear(x_ND, w1_EFD, counts_E, self.grouped_mm, b1_EF)
        up_NF = grouped_linear(x_ND, w3_EFD, counts_E, self.grouped_mm, b3_EF)
        if self.swiglu_limit is None:
            h_NF = self.activation(gate_NF) * up_NF
        else:
            gate_NF = gate_NF.clamp(max=self.swiglu_limit)
            h_NF = (up_NF.clamp(-self.swiglu_limit, self.swiglu_limit) + 1) * gate_NF * torch.sigmoid(self.swiglu_alpha * gate_NF)
        return grouped_linear(h_NF, w2_EDF, counts_E, self.grouped_mm, b2_ED)
