"""The GPU check's cases, one per process (bench/gpu_check.sh runs them, each under its own time limit).

    python bench/gpu_check.py cases [--smoke]                 # "part case limit_s" lines, in order
    python bench/gpu_check.py data --work DIR [--smoke]       # the synthetic prepared data, once
    python bench/gpu_check.py run PART CASE --work DIR [--smoke]
    python bench/gpu_check.py table --work DIR                # the tables from DIR/results.jsonl

Parts (full sizes for one H200; --smoke: tiny sizes on the CPU, to prove the script end to end):
  a  MFU of a ~1.1B dense Llama (llama3 preset, dim 2048, 16 layers, 16 heads / 8 KV heads, FFN 8192,
     vocab 32000) at seq 4096, document masks on/off x parallel.compile on/off, through the real Trainer:
     its own tokens/s, MFU and memory from metrics.jsonl (the last interval, after the warm-up steps)
  b  MFU of the qwen3_moe preset cut to 4 layers of 64 experts (top 8 of 768-wide, grouped_mm), seq 4096
  c  one layer, and a 4-layer optimizer step, at 16k and 32k tokens with document masks, on every
     model.attention_backend: time, peak memory, max difference from the dense backend in the same run
  d  how long checkpoint.mode=sync | async | async_process blocks training (Checkpointer.blocked_seconds)
  e  every configs/model/*_tiny.yaml: 3 steps on the CPU and on CUDA from the same init and data, fp32
     (parallel.tf32=false: plain fp32 on both) and bf16; the table gives the max relative loss difference
  f  model.linear_kernels=auto vs torch for gated_deltanet (qwen3_next_tiny) and mamba2 (mamba2_tiny):
     the losses of 3 steps; skipped where the kernel libraries or the key are missing
  g  host syncs in a step that does not report, counted by CUDA itself (torch.cuda.set_sync_debug_mode):
     the dense model with document masks (FlexAttention) and the MoE model; 0 expected (CPU: skipped)
Every case appends JSON lines {"part", "case", ...} to DIR/results.jsonl.
"""

import argparse
import gc
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from common.atomic import atomic_directory  # noqa: E402
from common.compose import compose  # noqa: E402
from common.paths import CONFIGS_DIR  # noqa: E402
from data.prepare import FORMAT_VERSION, MANIFEST  # noqa: E402
from data.shards import ShardWriter  # noqa: E402
from train.callbacks import Checkpoints, FinalModel, Summary, Validate  # noqa: E402
from train.model.config import ModelConfig, apply_overrides  # noqa: E402
from train.model.transformer import Transformer  # noqa: E402
from train.parallel.world import close_world, set_determinism  # noqa: E402
from train.run_folder import METRICS  # noqa: E402
from train.trainer import Trainer  # noqa: E402

VOCAB = 8192  # of the synthetic data; every model here has at least this many tokens
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # main() sets the CPU for --smoke
TINY_PRESETS = sorted(p.stem for p in (CONFIGS_DIR / "model").glob("*_tiny.yaml"))

# (a) ~1.1B parameters: 16 x 63M in the blocks + 2 x 65M embedding and head
DENSE_1B = ["model=llama3", "model.dim=2048", "model.num_layers=16", "model.vocab_size=32000",
            "model.mixers.full.attention.num_heads=16", "model.mixers.full.attention.num_kv_heads=8",
            "model.mixers.full.attention.head_dim=128", "model.ffns.swiglu.hidden_dim=8192"]
DENSE_SMOKE = ["model=llama3", "model.dim=64", "model.num_layers=2", "model.vocab_size=8192",
               "model.mixers.full.attention.num_heads=4", "model.mixers.full.attention.num_kv_heads=2",
               "model.mixers.full.attention.head_dim=16", "model.ffns.swiglu.hidden_dim=128"]
MOE = ["model=qwen3_moe", "model.num_layers=4", "model.vocab_size=32000", "model.ffns.moe.moe.num_experts=64",
       "model.ffns.moe.moe.grouped_mm=true"]
MOE_SMOKE = ["model=qwen3_moe", "model.dim=64", "model.num_layers=2", "model.vocab_size=8192",
             "model.mixers.full.attention.num_heads=4", "model.mixers.full.attention.num_kv_heads=2",
             "model.mixers.full.attention.head_dim=16", "model.ffns.moe.moe.num_experts=8",
             "model.ffns.moe.moe.hidden_dim=32", "model.ffns.moe.moe.router.top_k=2", "model.ffns.moe.moe.grouped_mm=true"]
CHECKPOINT = ["model=llama3", "model.dim=1024", "model.num_layers=12", "model.vocab_size=32000",  # ~0.27B
              "model.mixers.full.attention.num_heads=8", "model.mixers.full.attention.num_kv_heads=8",
              "model.mixers.full.attention.head_dim=128", "model.ffns.swiglu.hidden_dim=4096"]
BACKENDS = ("dense", "flex", "auto")
LINEAR = {"gated_deltanet": ("qwen3_next_tiny", ["fla"]), "mamba2": ("mamba2_tiny", ["mamba_ssm", "causal_conv1d"])}


def cases(smoke: bool):
    """(part, case, seconds): the time limit of each case's process. The full limits add up to 460 s on one
    H200 (+ at most 60 s for the data; expected in all: about 6 minutes)."""
    a = [(f"doc_{d}-compile_{c}", (120 if smoke else 70) if c == "on" else (40 if smoke else 30))
         for c in ("off", "on") for d in ("on", "off")]
    return ([("a", name, limit) for name, limit in a]
            + [("b", "qwen3_moe", 60 if smoke else 40)]
            + [("c", f"T={t}", 60 if smoke else 30) for t in ((256, 512) if smoke else (16384, 32768))]
            + [("d", "modes", 90 if smoke else 35)]
            + [("e", "reference", 90 if smoke else 30), ("e", "device", 90 if smoke else 25)]
            + [("f", "linear_kernels", 30 if smoke else 20)]
            + [("g", name, 60 if smoke else 25) for name in ("dense", "moe")])


# --- helpers ------------------------------------------------------------------------------------------


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def free_memory() -> None:
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def peak_memory_gb() -> float:
    return torch.cuda.max_memory_allocated(DEVICE) / 1e9 if DEVICE.type == "cuda" else float("nan")


def reset_peak_memory() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)


def emit(work: Path, part: str, case: str, **row) -> None:
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps({"part": part, "case": case, **row}) + "\n")
    print(json.dumps({"part": part, "case": case, **row}), flush=True)


def has_model_key(key: str) -> bool:
    return hasattr(ModelConfig(), key)


def random_documents(rng, total: int, mean: int) -> list:
    """Documents of geometric lengths (16 tokens at least) of random tokens, each ending in EOS (id 0)."""
    documents, left = [], total
    while left > 0:
        length = min(left, max(16, int(rng.geometric(1 / mean))))
        tokens = rng.integers(1, VOCAB, size=length, dtype=np.int64)
        tokens[-1] = 0
        documents.append(tokens)
        left -= length
    return documents


def write_data(folder: Path, smoke: bool) -> None:
    """A prepared folder (data/shards.py's format and manifest) of random tokens in documents of ~1000."""
    if (folder / MANIFEST).exists():
        return
    rng = np.random.default_rng(0)
    sizes = {"train": 200_000 if smoke else 2_000_000, "val": 20_000 if smoke else 70_000}
    with atomic_directory(folder) as work:
        splits = {}
        for split, total in sizes.items():
            writer = ShardWriter(work, split, "uint16", shard_tokens=1 << 20)
            for document in random_documents(rng, total, mean=1024):
                writer.add(document)
            shards = writer.close()
            splits[split] = {"tokens": sum(s["tokens"] for s in shards), "documents": sum(s["documents"] for s in shards),
                             "shards": shards}
        manifest = {"format": FORMAT_VERSION, "name": "gpu_check", "fingerprint": "random", "sources": [],
                    "tokenizer": {"file": "tokenizer.json", "sha256": None, "trained": False, "vocab_size": VOCAB,
                                  "eos_id": 0, "bos_id": None, "pad_id": None},
                    "dtype": "uint16", "splits": splits}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def train_run(work: Path, name: str, overrides: list, device: torch.device = None) -> list:
    """Steps on `device` (default: the check's) through the real Trainer (the loop, its LogMetrics and
    metrics.jsonl), without validation, checkpoints and the final model folder; the logged records."""
    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    config = OmegaConf.to_object(compose("train", [f"data.path={work / 'data'}", f"out_dir={run_dir.parent}",
                                                   f"run_name={name}", f"parallel.device={(device or DEVICE).type}",
                                                   "trainer.val_every=0", *overrides]))
    trainer = Trainer(config)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, (Validate, Checkpoints, FinalModel, Summary))]
    try:
        trainer.train()
    finally:
        trainer.close()
        del trainer
        free_memory()
    return [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]


def batch_args(batch: int, seq: int, steps: int, log_every: int) -> list:
    return [f"data.seq_len={seq}", f"model.max_seq_len={seq}", f"trainer.global_batch_size={batch}",
            f"trainer.micro_batch_size={batch}", f"trainer.max_steps={steps}", f"trainer.log_every={log_every}",
            "optim.warmup_steps=1"]


# --- the parts ----------------------------------------------------------------------------------------


def part_a(work: Path, case: str, smoke: bool) -> None:
    doc, compiled = (part.split("_")[1] == "on" for part in case.split("-"))
    shape = DENSE_SMOKE if smoke else DENSE_1B
    sizes = batch_args(2, 128, 4, 2) if smoke else batch_args(8, 4096, 4, 2)
    records = train_run(work, f"a-{case}", [*shape, *sizes, f"data.document_masking={str(doc).lower()}",
                                            f"parallel.compile={str(compiled).lower()}"])
    last = records[-1]  # steps 3-4: after the warm-up (and the compilation)
    emit(work, "a", case, tokens_per_s=round(last["tokens_per_s"]), mfu_pct=round(100 * last["mfu"], 1),
         memory_gb=round(last["memory_gb"], 1), loss=round(last["loss"], 4))


def part_b(work: Path, case: str, smoke: bool) -> None:
    shape = MOE_SMOKE if smoke else MOE
    sizes = batch_args(2, 128, 4, 2) if smoke else batch_args(4, 4096, 4, 2)
    last = train_run(work, "b-moe", [*shape, *sizes])[-1]
    emit(work, "b", case, tokens_per_s=round(last["tokens_per_s"]), mfu_pct=round(100 * last["mfu"], 1),
         memory_gb=round(last["memory_gb"], 1), loss=round(last["loss"], 4), aux_loss=round(last.get("aux_loss", 0.0), 4))


def attention_model(smoke: bool, layers: int, length: int, backend: str) -> Transformer:
    base = compose("train", DENSE_SMOKE if smoke else DENSE_1B).model
    config = apply_overrides(OmegaConf.to_object(base), {"num_layers": layers, "max_seq_len": length,
                                                         "attention_backend": backend})
    torch.manual_seed(0)
    with torch.device(DEVICE):
        return Transformer(config).to(torch.bfloat16)


def timed_steps(model: Transformer, tokens_BT, doc_ids_BT, optimizer, repeats: int = 2):
    """fwd + bwd (+ the optimizer step): the median seconds of `repeats` after one warm-up, the first
    output and the first gradients."""
    times, first = [], None
    for i in range(repeats + 1):
        synchronize()
        started = time.perf_counter()
        out_BTD = model.hidden_states(tokens_BT, doc_ids_BT)
        out_BTD.float().square().mean().backward()
        if i == 0:
            first = (out_BTD.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters()
                                                if p.grad is not None})  # the output head is not used here
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        synchronize()
        if i:
            times.append(time.perf_counter() - started)
    return statistics.median(times), first


def max_difference(result, reference) -> tuple:
    out, grads = result
    ref_out, ref_grads = reference
    grad = max(((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item() for n, g in ref_grads.items())
    return (out - ref_out).abs().max().item(), grad


def part_c(work: Path, case: str, smoke: bool) -> None:
    if not has_model_key("attention_backend"):
        emit(work, "c", case, skipped="model.attention_backend is not in this checkout")
        return
    length = int(case.split("=")[1])
    rng = np.random.default_rng(1)
    doc_ids = np.concatenate([np.full(len(d), i) for i, d in enumerate(random_documents(rng, length, mean=2048))])
    doc_ids_BT = torch.from_numpy(doc_ids)[None].to(DEVICE)
    tokens_BT = torch.from_numpy(rng.integers(0, VOCAB, size=(1, length))).to(DEVICE)
    for layers in (1, 4):
        reference = None
        for backend in BACKENDS:
            label = f"T={length} {layers} layer{'s' if layers > 1 else ''} {'step' if layers > 1 else 'fwd+bwd'}"
            try:
                model = attention_model(smoke, layers, length, backend)
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if layers > 1 else None
                reset_peak_memory()
                seconds, result = timed_steps(model, tokens_BT, doc_ids_BT, optimizer)
                row = {"backend": backend, "ms": round(1000 * seconds, 1), "peak_gb": round(peak_memory_gb(), 2)}
                if backend == "dense":
                    reference = result
                elif reference is not None:
                    out, grad = max_difference(result, reference)
                    row.update(max_out_diff=f"{out:.2e}", max_rel_grad_diff=f"{grad:.2e}")
                emit(work, "c", label, **row)
                del model, optimizer, result
            except torch.OutOfMemoryError:
                emit(work, "c", label, backend=backend, error="out of memory")
            except Exception as error:  # a backend that cannot run here (e.g. flex backward on the CPU)
                emit(work, "c", label, backend=backend, error=f"{type(error).__name__}: {str(error)[:120]}")
            free_memory()


def part_d(work: Path, case: str, smoke: bool) -> None:
    shape = DENSE_SMOKE if smoke else CHECKPOINT
    for mode in ("sync", "async", "async_process"):
        name = f"d-{mode}"
        shutil.rmtree(work / "runs" / name, ignore_errors=True)
        config = OmegaConf.to_object(compose("train", [
            f"data.path={work / 'data'}", f"out_dir={work / 'runs'}", f"run_name={name}", f"parallel.device={DEVICE.type}", *shape,
            *batch_args(2, 128 if smoke else 1024, 3, 1), f"checkpoint.mode={mode}", "checkpoint.keep=1"]))
        trainer = Trainer(config)
        try:
            micro_batches = trainer.stream.next_step(trainer.plan.accumulation, 1)
            uploads = []
            for step in range(1, 4):  # the first save also starts the saver (thread, process)
                trainer.train_step(micro_batches)
                trainer.progress.step = step
                synchronize()
                started = time.perf_counter()  # saves far apart: the previous one is on disk first
                trainer.checkpointer.wait()
                uploads.append(time.perf_counter() - started)
                trainer.checkpointer.save(step)
            started = time.perf_counter()
            trainer.checkpointer.wait()
            uploads.append(time.perf_counter() - started)
            blocked = trainer.checkpointer.blocked_seconds
            emit(work, "d", mode, first_save_blocks_s=round(blocked[0], 3),
                 later_saves_block_s=round(statistics.median(blocked[1:]), 3),
                 then_on_disk_after_s=round(statistics.median(uploads[1:]), 3))
        finally:
            trainer.close()
            del trainer
            free_memory()


def part_e(work: Path, case: str, smoke: bool) -> None:
    """Losses of 3 steps per preset and precision: case "reference" on the CPU, "device" on the check's
    device (the CPU too under --smoke); the table compares them. Deterministic kernels on both sides
    (trainer.deterministic; without it an MoE run differs from itself)."""
    set_determinism(True)  # before any CUDA work: CUBLAS_WORKSPACE_CONFIG
    device = torch.device("cpu") if case == "reference" else DEVICE
    presets = ["llama3_tiny", "qwen3_moe_tiny"] if smoke else TINY_PRESETS
    for preset in presets:
        for precision in ("fp32", "bf16"):
            row = {"precision": precision, "role": case, "device": device.type}
            try:
                records = train_run(work, f"e-{case}-{preset}-{precision}", [
                    f"model={preset}", *batch_args(4, 128, 3, 1), f"parallel.param_dtype={precision}",
                    "parallel.tf32=false", "trainer.deterministic=true"], device)
                emit(work, "e", preset, **row, losses=[r["loss"] for r in records])
            except Exception as error:
                emit(work, "e", preset, **row, error=f"{type(error).__name__}: {str(error)[:120]}")


def part_f(work: Path, case: str, smoke: bool) -> None:
    for mixer, (preset, modules) in LINEAR.items():
        missing = [m for m in modules if not importable(m)]
        reason = ("model.linear_kernels is not in this checkout" if not has_model_key("linear_kernels") else
                  "needs CUDA" if DEVICE.type != "cuda" else f"missing {', '.join(missing)}" if missing else None)
        if reason:
            emit(work, "f", mixer, skipped=reason)
            continue
        for precision in ("fp32", "bf16"):
            losses = {}
            for kernels in ("torch", "auto"):
                records = train_run(work, f"f-{mixer}-{precision}-{kernels}", [
                    f"model={preset}", *batch_args(4, 256, 3, 1), f"model.linear_kernels={kernels}",
                    f"parallel.param_dtype={precision}", "parallel.tf32=false"])
                losses[kernels] = [r["loss"] for r in records]
            emit(work, "f", mixer, precision=precision, losses_torch=losses["torch"], losses_auto=losses["auto"],
                 max_rel_diff=f"{relative_difference(losses['auto'], losses['torch']):.2e}")


def part_g(work: Path, case: str, smoke: bool) -> None:
    """Three steps (compiles, caches, optimizer state), then one step that does not report, under CUDA's
    sync debug mode: every synchronising call in it warns, with the Python line that made it."""
    if DEVICE.type != "cuda":
        emit(work, "g", case, skipped="needs CUDA")
        return
    import warnings

    shape = {"dense": DENSE_SMOKE if smoke else DENSE_1B, "moe": MOE_SMOKE if smoke else MOE}[case]
    sizes = batch_args(2, 128, 10, 10) if smoke else batch_args(2, 4096, 10, 10)
    config = OmegaConf.to_object(compose("train", [f"data.path={work / 'data'}", f"out_dir={work / 'runs'}",
                                                   f"run_name=g-{case}", "parallel.device=cuda", "trainer.val_every=0",
                                                   "data.document_masking=true", *shape, *sizes]))
    trainer = Trainer(config)
    try:
        for _ in range(3):
            step = trainer.progress.step + 1
            trainer.train_step(trainer.stream.next_step(trainer.plan.accumulation, step), report=False)
            trainer.progress.step = step
        batches = trainer.stream.next_step(trainer.plan.accumulation, trainer.progress.step + 1)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_step(batches, report=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0][:120] for w in caught if "synchroniz" in str(w.message).lower()]
        emit(work, "g", case, host_syncs=len(syncs), first=syncs[:3])
    finally:
        trainer.close()
        del trainer
        free_memory()


def importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # a kernel library built for another torch or CUDA fails in many ways
        return False


def relative_difference(a: list, b: list) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e, "f": part_f, "g": part_g}


# --- the tables ---------------------------------------------------------------------------------------

TITLES = {"a": "(a) ~1.1B dense Llama, seq 4096: the trainer's own figures (metrics.jsonl, the last interval)",
          "b": "(b) qwen3_moe, 4 layers of 64 experts, grouped_mm, seq 4096",
          "c": "(c) attention backends with document masks (bf16; differences vs dense in the same run)",
          "d": "(d) checkpoint blocking per mode (seconds save() held training)",
          "e": "(e) CPU vs GPU loss parity, tiny presets, 3 steps (max relative difference)",
          "f": "(f) linear-mixer kernels: model.linear_kernels=auto vs torch, 3 steps",
          "g": "(g) host syncs in a step that does not report (CUDA's sync debug mode; 0 expected)"}


def parity_rows(rows: list) -> list:
    by_key = {}
    for row in rows:
        by_key.setdefault((row["case"], row["precision"]), {})[row["role"]] = row
    out = []
    for (preset, precision), roles in by_key.items():
        cpu, gpu = roles.get("reference"), roles.get("device")
        row = {"case": preset, "precision": precision}
        if cpu is None or gpu is None or "losses" not in cpu or "losses" not in gpu:
            problems = [f"{r['device']}: {r['error']}" for r in (cpu, gpu) if r is not None and "error" in r]
            row["result"] = "; ".join(problems) or "only one side ran"
        else:
            row["max_rel_diff"] = f"{relative_difference(gpu['losses'], cpu['losses']):.2e}"
            row["cpu_losses"] = " ".join(f"{x:.4f}" for x in cpu["losses"])
            row["device_losses"] = f"{gpu['device']}: " + " ".join(f"{x:.4f}" for x in gpu["losses"])
        out.append(row)
    return out


def table(work: Path, smoke: bool) -> str:
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()] \
        if (work / "results.jsonl").exists() else []
    lines = ["--smoke: tiny sizes on the CPU (the titles give the full sizes)"] if smoke else []
    for part, title in TITLES.items():
        mine = [r for r in rows if r["part"] == part]
        if part == "e":
            mine = [r for r in mine if "role" not in r] + parity_rows([r for r in mine if "role" in r])
        lines.append(f"\n{title}")
        if not mine:
            lines.append("  (no result)")
            continue
        columns = [k for k in dict.fromkeys(k for r in mine for k in r) if k != "part"]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for r in mine:
            lines.append("| " + " | ".join(format_cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def format_cell(value) -> str:
    if isinstance(value, list):
        return " ".join(f"{x:.4f}" for x in value)
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["cases", "data", "run", "table"])
    parser.add_argument("part", nargs="?")
    parser.add_argument("case", nargs="?")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = torch.device("cpu")
    if args.command == "cases":
        for part, case, limit in cases(args.smoke):
            print(part, case, limit)
    elif args.command == "data":
        write_data(args.work / "data", args.smoke)
    elif args.command == "table":
        print(table(args.work, args.smoke), end="")
    else:
        try:
            PARTS[args.part](args.work, args.case, args.smoke)
        finally:
            close_world()


if __name__ == "__main__":
    main()
