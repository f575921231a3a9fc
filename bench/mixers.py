"""Forward + backward time per token of each token mixer against softmax attention.

    python bench/mixers.py [--lengths 512 2048 8192] [--repeats 2] [--device cuda]

One mixer layer (no embeddings, no FFN) at dim 256 with 4 heads, batch 1, fp32 on --device (default:
CUDA when available, else the CPU), training forms (softmax attention through SDPA; MLA; chunked scans for linear attention, Gated DeltaNet and
Mamba2; the parallel hybrid runs attention and Mamba2 side by side). Prints microseconds per token,
the best of `repeats` runs after one warm-up, and the last length's over the first's: linear mixers
should stay flat per token (O(T) total, a ratio near 1), softmax attention and MLA grow with T
(O(T^2)). No asserts.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import synchronize, trainer_numerics, where  # noqa: E402
from train.model.config import (  # noqa: E402
    AttentionConfig,
    GatedDeltaNetConfig,
    LinearAttentionConfig,
    Mamba2Config,
    MixerConfig,
    MLAConfig,
    ModelConfig,
    ParallelHybridConfig,
    PositionConfig,
)
from train.model.mixer import build_mixer  # noqa: E402

DIM, HEADS, HEAD_DIM = 256, 4, 64
MAMBA = Mamba2Config(num_heads=HEADS, head_dim=HEAD_DIM, state_size=64, chunk_size=64)
ATTENTION = AttentionConfig(num_heads=HEADS, head_dim=HEAD_DIM)
MIXER_CONFIGS = {
    "softmax_attention": MixerConfig(kind="softmax_attention", attention=ATTENTION),
    "mla": MixerConfig(kind="mla", mla=MLAConfig(num_heads=HEADS, kv_lora_rank=128, qk_nope_head_dim=48, qk_rope_head_dim=16, v_head_dim=HEAD_DIM)),
    "linear_attention": MixerConfig(kind="linear_attention", linear_attention=LinearAttentionConfig(num_heads=HEADS, chunk_size=64)),
    "gated_deltanet": MixerConfig(kind="gated_deltanet", gated_deltanet=GatedDeltaNetConfig(
        num_key_heads=HEADS, num_value_heads=HEADS, key_head_dim=HEAD_DIM, value_head_dim=HEAD_DIM, chunk_size=64)),
    "mamba2": MixerConfig(kind="mamba2", mamba2=MAMBA),
    "parallel_hybrid": MixerConfig(kind="parallel_hybrid", parallel_hybrid=ParallelHybridConfig(attention=ATTENTION, mamba2=MAMBA)),
}


def time_per_token(name: str, length: int, repeats: int, device: torch.device) -> float:
    model = ModelConfig(dim=DIM, position=PositionConfig(kind="rope"))
    torch.manual_seed(0)
    mixer = build_mixer(MIXER_CONFIGS[name], model, 0)
    for module in mixer.modules():
        if hasattr(module, "reset_extra_parameters"):
            module.reset_extra_parameters()
    mixer.to(device)
    x_BTD = torch.randn(1, length, DIM, device=device, requires_grad=True)
    positions_BT = torch.arange(length, device=device)[None]
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up
        synchronize(device)
        start = time.perf_counter()
        mixer(x_BTD, positions_BT).square().mean().backward()
        synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
        mixer.zero_grad(set_to_none=True)
        x_BTD.grad = None
    return best / length * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mixers", nargs="+", default=list(MIXER_CONFIGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    trainer_numerics(device)
    started = time.perf_counter()
    first, last = args.lengths[0], args.lengths[-1]
    header = (["mixer (us/token, fwd+bwd)"] + [f"T={n}" for n in args.lengths]
              + [f"T={last} / T={first}", f"x vs softmax @T={last}"])
    rows, softmax_last = [], None
    for name in args.mixers:
        times = [time_per_token(name, n, args.repeats, device) for n in args.lengths]
        if name == "softmax_attention":
            softmax_last = times[-1]
        rows.append([name] + [f"{t:.1f}" for t in times] + [f"{times[-1] / times[0]:.2f}",
                                                           f"{times[-1] / softmax_last:.2f}" if softmax_last else "-"])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    print(f"dim {DIM}, {HEADS} heads of {HEAD_DIM}, batch 1, fp32, {where(device)}")
    for row in [header] + rows:
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
