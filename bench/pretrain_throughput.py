"""Pre-training throughput: this project's training step vs Hugging Face `LlamaForCausalLM`, and how
long a checkpoint save blocks training (async vs sync).

    python bench/pretrain_throughput.py [--steps 8] [--data outputs/data/stdlib] [--device auto]

Same model (Llama: hidden 384, 6 layers, 6 heads, 2 KV heads, FFN 1024, vocab 8192, untied), same
batch (8 x 256 tokens of the prepared default corpus), same optimizer (torch AdamW, fused, the same
hyper-parameters) and the same precision on both sides:
- fp32: fp32 weights and compute;
- bf16: ours keeps fp32 master weights and computes in bf16 (FSDP2 MixedPrecisionPolicy), the peer
  runs under `torch.autocast(<device>, torch.bfloat16)`, the usual way to train an HF model in bf16.
Ours is the real Trainer.train_step (FSDP2 on a one-rank mesh, fused chunked cross-entropy). Both run
on --device (auto: CUDA when available, as parallel.device=auto picks; fp32 matmuls there use TF32 as
parallel.tf32 says). MFU uses the inspector's FLOPs per token and the peak of train.metrics: the
matmul measured on this CPU in the same run, or the GPU's datasheet figure. Prints tables; asserts nothing.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from train.config import LoggingConfig, TrainConfig  # noqa: E402
from train.data_loader import to_device  # noqa: E402
from train.metrics import peak_tflops  # noqa: E402
from train.model.config import apply_overrides, load_preset  # noqa: E402
from train.model.summary import summarize  # noqa: E402
from train.parallel.world import set_tf32  # noqa: E402
from train.stages import STAGES, stage_data  # noqa: E402
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


def batches(config: TrainConfig, count: int, device: torch.device):
    data = stage_data(STAGES["pretrain"], config)
    return [to_device(data.collate([data.train[i * BATCH + j] for j in range(BATCH)]), device, False)
            for i in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step_fn, data, device: torch.device, warmup: int = 2):
    for batch in data[:warmup]:
        step_fn(batch)
    times = []
    for batch in data[warmup:]:
        synchronize(device)
        started = time.perf_counter()
        step_fn(batch)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return BATCH * SEQ / statistics.median(times)


def ours(config: TrainConfig, data, device: torch.device) -> float:
    trainer = Trainer(config)
    try:
        return time_steps(lambda batch: trainer.train_step([batch], report=False), data, device)
    finally:
        trainer.close()


def huggingface(precision: str, data, device: torch.device) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=SEQ, tie_word_embeddings=False, attn_implementation="sdpa")).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step(batch):
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            logits = model(input_ids=batch["inputs"]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, data, device)


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
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = our_config(args.data, "fp32", tmp / "probe", device)
        if device.type == "cuda":
            set_tf32(probe.parallel.tf32)  # the peer's fp32 matmuls as ours (the trainer sets it at start)
        data = batches(probe, args.steps + 2, device)
        flops = summarize(probe.model, context=SEQ).flops_per_token
        rows = []
        for precision in ("fp32", "bf16"):
            peak = peak_tflops(LoggingConfig(), device, torch.float32 if precision == "fp32" else torch.bfloat16)
            peer = huggingface(precision, data, device)
            mine = ours(our_config(args.data, precision, tmp / f"run-{precision}", device), data, device)
            compiled = ours(our_config(args.data, precision, tmp / f"compiled-{precision}", device, compile=True), data, device)
            rows.append((precision, peak, peer, mine, compiled))
        blocking = checkpoint_blocking(args.data, tmp, data, device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"Llama 384x6, 6 heads / 2 KV heads, FFN 1024, vocab 8192; batch {BATCH}x{SEQ}; AdamW (fused); "
          f"{where}; median of {args.steps} steps")
    print(f"training FLOPs per token (inspector): {flops / 1e6:.1f} M\n")
    print("| precision | peak TFLOP/s | HF LlamaForCausalLM tok/s | MFU | llm-blocks tok/s | MFU | speed-up "
          "| + parallel.compile tok/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for precision, peak, peer, mine, compiled in rows:
        mfu = lambda rate: 100 * rate * flops / (peak * 1e12)  # noqa: E731
        print(f"| {precision} | {peak:.3f} | {peer:,.0f} | {mfu(peer):.1f}% | {mine:,.0f} | {mfu(mine):.1f}% | "
              f"{mine / peer:.2f}x | {compiled:,.0f} | {compiled / peer:.2f}x |")
    print("\n| checkpoint mode | blocks training (s) | vs sync |")
    print("|---|---:|---:|")
    for mode, seconds in blocking.items():
        print(f"| {mode} | {seconds:.3f} | {100 * seconds / blocking['sync']:.0f}% |")


if __name__ == "__main__":
    main()
