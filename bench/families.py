"""Training tokens/s of every family with a transformers counterpart: this project vs transformers on the
same model, fp32 and bf16, with MFU against this machine's matmul peak.

    python bench/families.py [--families llama3,qwen3_next] [--steps 4] [--warmup 1] [--threads N] [--data outputs/data/stdlib] [--device auto]

One row per adapter of train/model/hf (FAMILIES below: the family's tiny preset grown to a benchmark size,
dim 256, mostly 4 layers, vocab 8192). Both sides train the same model from the same initial weights: a
seeded random init written once as this project's model folder (ours: init.weights) and exported from it
by the family's adapter as a Hugging Face folder (the peer: AutoModelForCausalLM.from_pretrained, with the
attention and experts kernels transformers picks by default). Same batches (BATCH x SEQ tokens of the
prepared corpus), same AdamW (train/optim.py's groups and settings) and gradient clipping, same precision
(bench/harness.py: fp32; bf16 compute with fp32 master weights, ours through parallel.param_dtype=bf16,
the peer under autocast). Ours is the real Trainer.train_step (one process, not sharded: bf16 under
torch.autocast too; fused chunked cross-entropy, the router-bias update of DeepSeek-V3 and LongCat-Flash).

Before timing, each side trains one step on the first batch and their losses must agree (fp32: within
1e-3 relative; bf16: 3e-2), so a row never compares different models; the check is printed. Then one
untimed warm-up step and --steps timed ones, the sides taking turns on every batch (harness.
interleaved_times); rates are the medians, ratios the medians of the per-batch ratios (harness.paired_ratio:
two steps timed side by side meet the same load). The peer column says what transformers runs on this
machine: its attention implementation, its experts kernel, and for the linear mixers whether the
library kernel (fla, mamba_ssm, causal_conv1d) is installed or its PyTorch fallback runs. MFU = rate x
training FLOPs per token (the inspector, train/model/summary.py: 6 x active matmul weights + attention
scores) / the peak. Prints the peaks and the table; asserts nothing but the loss check.
"""

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import batches, interleaved_times, paired_ratio, peak, peer_step, pick_device, trainer_numerics, where  # noqa: E402
from bench.pretrain_throughput import our_config  # noqa: E402
from train.model.config import apply_overrides, load_preset  # noqa: E402
from train.model.folder import save_model  # noqa: E402
from train.model.hf import export_hf  # noqa: E402
from train.model.summary import summarize  # noqa: E402
from train.model.transformer import Transformer  # noqa: E402
from train.trainer import Trainer  # noqa: E402

BATCH, SEQ = 4, 256
SHAPE = {"dim": 256, "num_layers": 4, "vocab_size": 8192, "max_seq_len": SEQ}
ATTENTION = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64}
SLIDING = {**ATTENTION, "window": 128}  # half the sequence: the sliding layers' masks matter
MLA = {"num_heads": 4, "q_lora_rank": 128, "kv_lora_rank": 128, "qk_nope_head_dim": 48, "qk_rope_head_dim": 16, "v_head_dim": 64}
EXPERTS = {"num_experts": 8, "hidden_dim": 256}  # the presets' routers: top 2 (LongCat-Flash: 3 of 8 + 4 zero experts)
FFN = 704  # ~2.75 x dim, the SwiGLU width of Llama-like models


@dataclass(frozen=True)
class Family:
    preset: str  # the tiny preset grown by SHAPE and `overrides`
    overrides: dict = field(default_factory=dict)
    kernels: tuple = ()  # (the linear mixer, the packages of transformers' fast path for it), if any


FAMILIES = {
    "llama3": Family("llama3_tiny", {"mixers.full.attention": ATTENTION, "ffns.swiglu.hidden_dim": FFN}),
    "qwen3": Family("qwen3_tiny", {"mixers.full.attention": ATTENTION, "ffns.swiglu.hidden_dim": FFN}),
    "gpt2": Family("gpt2_tiny", {"mixers.full.attention.num_heads": 4, "ffns.mlp.hidden_dim": 4 * 256}),
    "mistral": Family("mistral_7b_tiny", {"mixers.sliding.attention": SLIDING, "ffns.swiglu.hidden_dim": FFN}),
    "qwen2": Family("qwen2_5_0_5b_tiny", {"mixers.full.attention": ATTENTION, "ffns.swiglu.hidden_dim": FFN}),
    "gemma3": Family("gemma3_tiny", {"num_layers": 6, "embedding_scale": 16.0, "ffns.geglu.hidden_dim": FFN,  # 5:1 local:global
                                     "mixers.local.attention": {**SLIDING, "scale_dim": 64},
                                     "mixers.global.attention": {**ATTENTION, "scale_dim": 64}}),
    "olmo2": Family("olmo2_tiny", {"mixers.full.attention": ATTENTION, "ffns.swiglu.hidden_dim": FFN}),
    "mixtral": Family("mixtral_8x7b_tiny", {"mixers.full.attention": ATTENTION, "ffns.moe.moe": EXPERTS}),
    "qwen3_moe": Family("qwen3_moe_tiny", {"mixers.full.attention": ATTENTION, "ffns.moe.moe": EXPERTS}),
    "deepseek_v3": Family("deepseek_v3_tiny", {"mixers.mla.mla": MLA, "ffns.swiglu.hidden_dim": FFN,
                                               "ffns.moe.moe": {**EXPERTS, "shared_hidden_dim": 256},
                                               "layer_ffns": ["swiglu", "moe", "moe", "moe"]}),
    "gpt_oss": Family("gpt_oss_tiny", {"mixers.sliding.attention": SLIDING, "mixers.full.attention": ATTENTION,
                                       "ffns.moe.moe": EXPERTS}),
    "qwen3_next": Family("qwen3_next_tiny", {"mixers.full.attention": ATTENTION, "ffns.moe.moe": {**EXPERTS, "shared_hidden_dim": 256},
                                             "mixers.linear.gated_deltanet": {"num_key_heads": 2, "num_value_heads": 4,
                                                                              "key_head_dim": 64, "value_head_dim": 64}},
                         kernels=("Gated DeltaNet", ("fla", "causal_conv1d"))),
    "longcat_flash": Family("longcat_flash_tiny", {"num_layers": 2, "mixers.mla.mla": MLA, "ffns.swiglu.hidden_dim": FFN,  # 2 blocks each
                                                   "ffns.moe.moe": EXPERTS}),
    "mamba2": Family("mamba2_tiny", {"num_layers": 6, "mixers.ssm.mamba2": {  # no FFN: more layers
        "num_heads": 8, "head_dim": 64, "state_size": 64, "num_groups": 1, "chunk_size": 64}}, kernels=("SSD", ("mamba_ssm", "causal_conv1d"))),
}
TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2}  # relative difference of the first step's losses


@dataclass
class Row:
    family: str
    params: int = 0
    flops: int = 0  # training FLOPs per token
    peer: str = ""  # what transformers runs
    loss_differences: dict = field(default_factory=dict)  # precision -> relative difference of the first-step losses
    rates: dict = field(default_factory=dict)  # precision -> (peer, ours) tokens/s, medians
    ratios: dict = field(default_factory=dict)  # precision -> how many times the peer's speed ours has (harness.paired_ratio)


def model_config(name: str):
    family = FAMILIES[name]
    return apply_overrides(load_preset(family.preset), {**SHAPE, **family.overrides})


def peer_path(name: str, model) -> str:
    """What transformers runs: attention implementation, experts kernel, the linear mixers' kernels or fallback."""
    config = model.config
    parts = [] if name == "mamba2" else [config._attn_implementation]
    if getattr(config, "_experts_implementation", None) and any("experts" in n for n, _ in model.named_modules()):
        parts.append(f"experts {config._experts_implementation}")
    if FAMILIES[name].kernels:
        mixer, packages = FAMILIES[name].kernels
        found = [p for p in packages if importlib.util.find_spec(p) is not None]
        absent = [p for p in packages if p not in found]
        parts.append(f"{mixer}: " + ", ".join(found + ([f"torch fallback (no {', '.join(absent)})"] if absent else [])))
    return ", ".join(parts)


def measure(name: str, args, data: list, work: Path, device: torch.device) -> Row:
    """Both precisions of one family, from one seeded init written as our folder and exported as transformers'."""
    config = model_config(name)
    torch.manual_seed(0)
    model = Transformer(config)
    save_model(model, work / name / "ours")
    export_hf(model, work / name / "hf")
    summary = summarize(config, context=SEQ)
    row = Row(name, params=summary.params_active, flops=summary.flops_per_token)
    for precision in ("fp32", "bf16"):
        compare(row, precision, args, data, work / name, device)
        gc.collect()
    return row


def compare(row: Row, precision: str, args, data: list, folder: Path, device: torch.device) -> None:
    """The first-step loss check, then the interleaved timing, of ours against transformers in `precision`."""
    config = our_config(args.data, precision, folder / f"run-{precision}", device)
    config.init.weights = str(folder / "ours")
    config.trainer.global_batch_size = config.trainer.micro_batch_size = BATCH
    peer = transformers.AutoModelForCausalLM.from_pretrained(folder / "hf").to(device).train()
    row.peer = peer_path(row.family, peer)
    trainer = Trainer(config)
    try:
        step = {"transformers": peer_step(peer, config, precision, device),
                "ours": lambda batch: trainer.train_step([batch], report=False)}
        ours_loss = trainer.train_step([data[0]], report=True).figures["loss"]
        peer_loss = step["transformers"](data[0]).item()
        difference = row.loss_differences[precision] = abs(ours_loss - peer_loss) / abs(peer_loss)
        print(f"{row.family} {precision}: first-step loss ours {ours_loss:.5f}, transformers {peer_loss:.5f} "
              f"(relative difference {difference:.1e})", flush=True)
        if not difference <= TOLERANCE[precision]:
            sys.exit(f"{row.family} {precision}: the two sides' first losses differ by {difference:.1e} (more than "
                     f"{TOLERANCE[precision]}): they do not train the same model; check its adapter (tests/model/hf)")
        times = interleaved_times(step, data[1:], args.warmup, device)
        row.rates[precision] = tuple(BATCH * SEQ / statistics.median(times[side]) for side in ("transformers", "ours"))
        row.ratios[precision] = paired_ratio(times["ours"], times["transformers"])
    finally:
        trainer.close()


def table(rows: list, peaks: dict) -> list:
    lines = ["| family | transformers runs | M params (active) | MFLOP/token | fp32 HF tok/s (MFU) | fp32 ours tok/s (MFU) "
             "| fp32 ratio | bf16 HF tok/s (MFU) | bf16 ours tok/s (MFU) | bf16 ratio | first-loss difference fp32 / bf16 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cells = [row.family, row.peer, f"{row.params / 1e6:.1f}", f"{row.flops / 1e6:.0f}"]
        for precision in ("fp32", "bf16"):
            mfu = lambda rate: 100 * rate * row.flops / (peaks[precision] * 1e12)  # noqa: E731
            peer, mine = row.rates[precision]
            cells += [f"{peer:,.0f} ({mfu(peer):.0f}%)", f"{mine:,.0f} ({mfu(mine):.0f}%)", f"{row.ratios[precision]:.2f}x"]
        cells.append(" / ".join(f"{row.loss_differences[p]:.0e}" for p in ("fp32", "bf16")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side, family and precision (the median counts)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the loss check")
    parser.add_argument("--data", default="outputs/data/stdlib", help="a folder prepared by `python -m data`")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of both sides (default: every core, as training uses; on a machine others "
                             "share, 1 thread measures the work rather than the waits at each parallel region)")
    args = parser.parse_args()
    names = args.families.split(",")
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        sys.exit(f"--families: {unknown} unknown; choose from {', '.join(FAMILIES)}")
    if not Path(args.data, "manifest.json").exists():
        sys.exit(f"{args.data}: not prepared; run `python -m data` first")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = pick_device(args.device)
    trainer_numerics(device)
    torch.set_num_threads(args.threads)
    peaks = peak(device)
    print(f"{where(device)}; matmul peak fp32 {peaks['fp32']:.3f} TFLOP/s, bf16 {peaks['bf16']:.3f} TFLOP/s "
          f"({'measured, 1024x1024 matmuls' if device.type == 'cpu' else 'datasheet'})", flush=True)
    with tempfile.TemporaryDirectory() as work:
        probe = our_config(args.data, "fp32", Path(work) / "probe", device)
        data = batches(probe, 1 + args.warmup + args.steps, BATCH, device)  # the same for every row and side
        rows = [measure(name, args, data, Path(work), device) for name in names]
    print(f"\nbatch {BATCH}x{SEQ}, AdamW (fused); median of {args.steps} interleaved steps after {args.warmup} warm-up; "
          f"transformers {transformers.__version__}, torch {torch.__version__}\n")
    print("\n".join(table(rows, peaks)))


if __name__ == "__main__":
    main()
