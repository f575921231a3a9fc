"""Training metrics: the console line, `metrics.jsonl` in the run folder, and Weights & Biases.

Only rank 0 writes. After a restart, records past the resumed step are dropped from metrics.jsonl and
the same W&B run is resumed (its id is kept in the run folder), so steps stay aligned, also across
SLURM requeues. The W&B run config is the resolved training config plus `launch`: the SLURM job id,
node list and restart count, the elastic restart count, the world size and the git commit.
MFU = achieved model FLOP/s / peak FLOP/s, with the model's training FLOPs per token from the
inspector (train/model/summary.py) and the peak from config, a table of known GPUs' datasheet figures
(bf16, TF32 and plain fp32), or (on CPU) a short matmul measurement.
"""

import json
import os
import re
import resource
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from common.atomic import atomic_write
from train.config import LoggingConfig
from train.run_folder import METRICS, wandb_run_id


@dataclass(frozen=True)
class GpuPeak:
    """Vendor datasheet figures per GPU, TFLOP/s, dense (without 2:4 sparsity)."""

    pattern: str  # a regular expression searched in torch.cuda.get_device_name
    bf16: float  # tensor cores
    tf32: float  # tensor cores: fp32 matmuls with TF32 on (parallel.tf32)
    fp32: float  # plain fp32 (CUDA cores): fp32 matmuls with TF32 off


# First match wins, so a variant comes before its family's plain name ("H100 PCIe" before "H100"), and
# the patterns keep other names out (A10 not A100 or A10G; H200 not GH200). The SXM parts report plain
# names: "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA B200".
GPU_PEAKS = (
    GpuPeak(r"\bH100 PCIe\b", bf16=756.0, tf32=378.0, fp32=51.0),
    GpuPeak(r"\bH100 NVL\b", bf16=835.0, tf32=418.0, fp32=60.0),
    GpuPeak(r"\bH100\b", bf16=989.0, tf32=495.0, fp32=67.0),  # SXM
    GpuPeak(r"\bH200 NVL\b", bf16=835.0, tf32=418.0, fp32=60.0),
    GpuPeak(r"\bH200\b", bf16=989.0, tf32=495.0, fp32=67.0),  # SXM: the H100's chip, more memory
    GpuPeak(r"\bB200\b", bf16=2250.0, tf32=1125.0, fp32=75.0),  # HGX B200 datasheet / 8 GPUs, halved
    GpuPeak(r"\bA100\b", bf16=312.0, tf32=156.0, fp32=19.5),  # SXM and PCIe alike
    GpuPeak(r"\bL40S\b", bf16=362.0, tf32=183.0, fp32=91.6),
    GpuPeak(r"\bA10\b", bf16=125.0, tf32=62.5, fp32=31.2),
)


def measure_cpu_tflops(dtype: torch.dtype, trials: int = 5) -> float:
    """The matmul FLOP/s this CPU reaches, best of a few short trials (the best resists a busy machine).
    Used as the CPU's 'peak': MFU on CPU is relative to what a large matmul achieves here."""
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 8 * n**3 / (time.perf_counter() - started) / 1e12)
    return best


def gpu_peak_tflops(name: str, dtype: torch.dtype, tf32: bool) -> float:
    """The datasheet peak of a GPU called `name` for matmuls in `dtype` (fp32: the TF32 rate when `tf32`);
    NaN for a GPU not in GPU_PEAKS (set logging.peak_tflops then)."""
    for peak in GPU_PEAKS:
        if re.search(peak.pattern, name):
            if dtype == torch.float32:
                return peak.tf32 if tf32 else peak.fp32
            return peak.bf16
    return float("nan")


def peak_tflops(config: LoggingConfig, device: torch.device, dtype: torch.dtype) -> float:
    """Per device: logging.peak_tflops, else the GPU's datasheet figure (for fp32, whether TF32 is on as
    the process has it, set from parallel.tf32 by init_world), else on CPU a measured matmul."""
    if config.peak_tflops:
        return config.peak_tflops
    if device.type == "cuda":
        tf32 = torch.get_float32_matmul_precision() != "highest"
        return gpu_peak_tflops(torch.cuda.get_device_name(device), dtype, tf32)
    return measure_cpu_tflops(dtype)


def memory_stats(device: torch.device) -> Dict[str, float]:
    """Memory figures since the last reset_memory_stats. CUDA: the peaks of memory held by tensors
    (`memory_gb`) and by the caching allocator (`memory_reserved_gb`; far above the first: fragmentation),
    cudaMalloc retries after freeing the cache (`alloc_retries`: close to running out) and `ooms`.
    CPU: the process's peak resident memory since it started (`memory_gb`)."""
    if device.type != "cuda":
        return {"memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}  # KiB on Linux -> GB
    stats = torch.cuda.memory_stats(device)
    return {"memory_gb": stats.get("allocated_bytes.all.peak", 0) / 1e9,
            "memory_reserved_gb": stats.get("reserved_bytes.all.peak", 0) / 1e9,
            "alloc_retries": stats.get("num_alloc_retries", 0), "ooms": stats.get("num_ooms", 0)}


def reset_memory_stats(device: torch.device) -> None:
    """Start a new interval for memory_stats (CUDA: peaks, retries and OOMs; nothing to do on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.reset_accumulated_memory_stats(device)  # num_alloc_retries and num_ooms count from here


class MetricsLogger:
    def __init__(self, run_dir: Path, config: LoggingConfig, resolved_config: Dict[str, object], resume_step: int,
                 enabled: bool, stage: str):
        self.enabled, self.path = enabled, run_dir / METRICS
        self.wandb = None
        if not enabled:
            return
        rewind = False
        if self.path.exists():  # drop what a crashed attempt logged after the checkpoint we resume from
            records, torn = read_metrics(self.path)
            kept = [r for r in records if r.get("step", 0) <= resume_step]
            rewind = len(kept) < len(records)
            if rewind or torn:
                atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
                print(f"{self.path}: kept the records up to step {resume_step}, the resumed checkpoint; dropped "
                      f"{len(records) - len(kept)} later one(s)" + (" and a torn last line" if torn else ""), flush=True)
        if config.wandb.mode != "disabled":
            self.wandb = start_wandb(run_dir, config, resolved_config, stage, resume_step if rewind else None)

    def log(self, record: Dict[str, object]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            offline = self.wandb.settings.mode == "offline"
            self.wandb.finish()
            if offline:  # clusters without internet: upload later from a machine with it
                print(f"W&B offline run; upload it with: wandb sync {self.path.parent.resolve() / 'wandb'}/offline-run-*", flush=True)


def git_commit() -> Optional[str]:
    """The commit of this checkout (with '-dirty' if it has uncommitted changes), None outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def launch_info() -> Dict[str, object]:
    """Where and how this run was started: what a W&B user needs to find its logs and its code."""
    env = os.environ
    return {
        "slurm_job_id": env.get("SLURM_JOB_ID"), "slurm_job_name": env.get("SLURM_JOB_NAME"),
        "slurm_nodelist": env.get("SLURM_JOB_NODELIST"), "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", 0)),
        "elastic_restart_count": int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
        "world_size": int(env.get("WORLD_SIZE", 1)), "host": socket.gethostname(), "git_commit": git_commit(),
    }


def read_metrics(path: Path) -> Tuple[List[Dict[str, object]], bool]:
    """The records of a metrics.jsonl, and whether its last line was torn (a kill in the middle of a write:
    dropped). A malformed line before the last is an error naming the file and line."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                return records, True
            raise ValueError(f"{path}:{number}: not a JSON record; the file is damaged before its last line: "
                             "fix or remove that line") from None
    return records, False


def start_wandb(run_dir: Path, config: LoggingConfig, resolved_config: Dict[str, object], stage: str,
                rewind_to: Optional[int] = None):
    """The run folder's one W&B run, resumed. After a crash (`rewind_to`: the resumed checkpoint's step,
    with later steps logged by the dead attempt) an online run is rewound there (W&B's resume_from), so the
    dashboard holds the steps metrics.jsonl holds; W&B would otherwise drop the re-logged, non-monotonic
    steps and keep the dead attempt's. Offline runs cannot rewind before they are synced: they resume,
    and metrics.jsonl is the record."""
    import wandb

    settings = config.wandb
    if settings.mode not in ("online", "offline"):
        raise ValueError(f"logging.wandb.mode={settings.mode!r}; use online, offline or disabled")
    run_id = wandb_run_id(run_dir)
    where = (dict(resume_from=f"{run_id}?_step={rewind_to}") if rewind_to is not None and settings.mode == "online"
             else dict(id=run_id, resume="allow"))
    return wandb.init(
        project=settings.project, entity=settings.entity, group=settings.group, tags=list(settings.tags),
        name=f"{run_dir.name}", job_type=stage, mode=settings.mode, dir=str(run_dir),
        config={**resolved_config, "launch": launch_info()}, **where,
        allow_val_change=True,  # a requeued job updates `launch` (job restart count, nodes) in the resumed run
    )


def format_line(record: Dict[str, object], max_steps: int) -> str:
    parts = [f"step {record['step']:>5}/{max_steps}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}",
             f"grad {record['grad_norm']:.3f}", f"{record['tokens_per_s']:,.0f} tok/s",
             f"MFU {100 * record['mfu']:.1f}%", f"mem {record['memory_gb']:.2f} GB"]
    if "reward_accuracy" in record:  # DPO
        parts.append(f"reward acc {record['reward_accuracy']:.3f} | margin {record['reward_margin']:.3f}")
    if "aux_loss" in record:  # MoE: the worst-balanced layer on the console; every layer in JSONL and W&B
        cv = [v for k, v in record.items() if k.endswith("/load_cv")]
        zero = [v for k, v in record.items() if k.endswith("/zero_fraction")]
        dropped = [v for k, v in record.items() if k.endswith("/dropped_fraction")]
        parts.append(f"aux {record['aux_loss']:.4f} | load cv max {max(cv):.2f}"
                     + (f" | zero experts {sum(zero) / len(zero):.2f}" if any(zero) else "")
                     + (f" | dropped {max(dropped):.3f}" if any(dropped) else ""))
    return " | ".join(parts)


class Throughput:
    """Tokens/s and MFU over the interval since the last reading."""

    def __init__(self, flops_per_token: float, peak_tflops: float, devices: int):
        self.flops_per_token, self.peak, self.devices = flops_per_token, peak_tflops * 1e12, devices
        self.reset()

    def reset(self) -> None:
        self.tokens, self.started = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def read(self) -> Optional[tuple]:
        seconds = time.perf_counter() - self.started
        rate = self.tokens / seconds if seconds > 0 else 0.0
        mfu = rate * self.flops_per_token / (self.peak * self.devices)
        self.reset()
        return rate, mfu
