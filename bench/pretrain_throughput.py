"""Pre-training throughput: this project's training step vs Hugging Face `LlamaForCausalLM`, and how
long a checkpoint save blocks training (async vs sync).

    python bench/pretrain_throughput.py [--steps 8] [--data outputs/data/stdlib] [--device auto]

Same model (Llama: hidden 384, 6 layers, 6 heads, 2 KV heads, FFN 1024, vocab 8192, untied), same
batch (8 x 256 tokens of the prepared default corpus), same optimizer (AdamW, fused, train/optim.py's
groups and settings) and the same precision on both sides (bench/harness.py):
- fp32: fp32 weights and compute;
- bf16: ours keeps fp32 master weights and computes in bf16 (one process: torch.autocast, as under FSDP2's
  MixedPrecisionPolicy on more ranks), the peer runs under `torch.autocast(<device>, torch.bfloat16)`, the
  usual way to train an HF model in bf16.
Ours is the real Trainer.train_step (one process, not sharded; fused chunked cross-entropy). Both run
on --device (auto: CUDA when available, as parallel.device=auto picks; fp32 matmuls there use TF32 as
parallel.tf32 says). MFU uses the inspector's FLOPs per token and the peak of train.metrics: the
matmul measured on this CPU in the same run, or the GPU's datasheet figure. The peer, ours and ours with
parallel.compile take turns on every batch (harness.interleaved_times), so a busy machine slows them
alike; rates are medians. Beside each side's rate, its minor page faults per step (median): memory malloc took
fresh from the kernel, which a CPU pays for page by page (a GPU's caching allocator reuses its blocks).
Prints tables; asserts nothing.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from bench.harness import batches, interleaved_times, peak, peer_step, pick_device, trainer_numerics, where  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.model.config import apply_overrides, load_preset  # noqa: E402
from train.model.summary import summarize  # noqa: E402
from train.trainer import Trainer  # noqa: E402

SHAPE = {"dim": 384, "num_layers": 6, "vocab_size": 8192, "max_seq_len": 256, "tie_embeddings": False,
         "mixers.full.attention.num_heads": 6, "mixers.full.attention.num_kv_heads": 2,
         "mixers.full.attention.head_dim": 64, "ffns.swiglu.hidden_dim": 1024}
BATCH, SEQ = 8, 256


def our_config(data: str, precision: str, run_dir: Path, device: torch.device, checkpoint_mode: str = "sync",
               compile: bool = False) -> TrainConfig:
    config = TrainConfig(out_dir=str(run_dir.parent), run_name=run_dir.name)
    config.parallel.device = device.type
    config.model = apply_overrides(load_preset("llama3"), SHAPE)
    config.data.path, config.data.seq_len, config.data.document_masking = data, SEQ, False
    config.trainer.global_batch_size = config.trainer.micro_batch_size = BATCH
    config.parallel.param_dtype = precision
    config.parallel.compile = compile
    config.optim.implementation = "fused"
    config.checkpoint.mode, config.checkpoint.every, config.checkpoint.keep = checkpoint_mode, 0, 10
    config.logging.peak_tflops = 1.0  # not used here; skips the trainer's own peak measurement
    return OmegaConf.to_object(OmegaConf.structured(config))


def huggingface(device: torch.device):
    """transformers' LlamaForCausalLM of the same shape, with its own seeded init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=SEQ, tie_word_embeddings=False, attn_implementation="sdpa")).to(device)


def throughput(data: str, precision: str, run_root: Path, data_batches: list, device: torch.device) -> tuple:
    """({side: tokens/s}, {side: minor page faults per step}) of the peer, ours and ours compiled: medians of their
    interleaved steps (2 warm-up steps)."""
    trainers = {name: Trainer(our_config(data, precision, run_root / f"{name}-{precision}", device, compile=compile))
                for name, compile in (("ours", False), ("compiled", True))}
    try:
        steps = {"peer": peer_step(huggingface(device), trainers["ours"].config, precision, device)}
        steps.update({name: (lambda batch, t=trainer: t.train_step([batch], report=False)) for name, trainer in trainers.items()})
        faults = {}
        times = interleaved_times(steps, data_batches, 2, device, faults)
    finally:
        for trainer in trainers.values():
            trainer.close()
    return ({name: BATCH * SEQ / statistics.median(seconds) for name, seconds in times.items()},
            {name: statistics.median(counts) for name, counts in faults.items()})


def checkpoint_blocking(data: str, run_root: Path, data_batches, device: torch.device) -> dict:
    """Seconds a save() holds the training loop, median of 3 saves, per mode."""
    results = {}
    for mode in ("sync", "async", "async_process"):
        config = our_config(data, "fp32", run_root / f"ckpt-{mode}", device, checkpoint_mode=mode)
        trainer = Trainer(config)
        try:
            for step in range(1, 4):
                trainer.train_step([data_batches[step % len(data_batches)]], report=False)
                trainer.progress.step = step
                trainer.checkpointer.save(step)
            trainer.checkpointer.wait()
            results[mode] = statistics.median(trainer.checkpointer.blocked_seconds)
        finally:
            trainer.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (after 2 warm-up steps)")
    parser.add_argument("--data", default="outputs/data/stdlib", help="a folder prepared by `python -m data`")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where both sides train (auto: cuda when available)")
    args = parser.parse_args()
    if not Path(args.data, "manifest.json").exists():
        sys.exit(f"{args.data}: not prepared; run `python -m data` first")
    device = pick_device(args.device)
    trainer_numerics(device)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = our_config(args.data, "fp32", tmp / "probe", device)
        data = batches(probe, args.steps + 2, BATCH, device)
        flops = summarize(probe.model, context=SEQ).flops_per_token
        peaks = peak(device)
        rates = {precision: throughput(args.data, precision, tmp, data, device) for precision in peaks}
        blocking = checkpoint_blocking(args.data, tmp, data, device)

    print(f"Llama 384x6, 6 heads / 2 KV heads, FFN 1024, vocab 8192; batch {BATCH}x{SEQ}; AdamW (fused); "
          f"{where(device)}; median of {args.steps} steps, the three sides interleaved")
    print(f"training FLOPs per token (inspector): {flops / 1e6:.1f} M\n")
    print("| precision | peak TFLOP/s | HF LlamaForCausalLM tok/s | MFU | page faults/step | llm-blocks tok/s | MFU "
          "| page faults/step | speed-up | + parallel.compile tok/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for precision, (rate, faults) in rates.items():
        peer, mine, compiled = rate["peer"], rate["ours"], rate["compiled"]
        mfu = lambda rate: 100 * rate * flops / (peaks[precision] * 1e12)  # noqa: E731
        print(f"| {precision} | {peaks[precision]:.3f} | {peer:,.0f} | {mfu(peer):.1f}% | {faults['peer']:,.0f} | {mine:,.0f} | "
              f"{mfu(mine):.1f}% | {faults['ours']:,.0f} | {mine / peer:.2f}x | {compiled:,.0f} | {compiled / peer:.2f}x |")
    print("\n| checkpoint mode | blocks training (s) | vs sync |")
    print("|---|---:|---:|")
    for mode, seconds in blocking.items():
        print(f"| {mode} | {seconds:.3f} | {100 * seconds / blocking['sync']:.0f}% |")


if __name__ == "__main__":
    main()
