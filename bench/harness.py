"""What the training benchmarks share: the device and the trainer's numerics, batches of the prepared
corpus, the peer's training step, interleaved timing and the machine's matmul peak.

The peer (a transformers model) trains as pretrain_throughput.py's docstring says: fp32 weights, and
for bf16 `torch.autocast(<device>, torch.bfloat16)` (fp32 master weights and bf16 compute, as ours with
parallel.param_dtype=bf16); the loss is the cross-entropy of its logits (upcast to fp32) against the
batch's targets; AdamW and the learning-rate schedule from train/optim.py (the same parameter groups,
settings and warm-up as ours: the two models stay alike, and so do an MoE's routings) after the same
gradient clipping.
"""

import resource
import statistics
import time

import torch

from train.config import LoggingConfig, ParallelConfig, TrainConfig
from train.data_loader import to_device
from train.metrics import peak_tflops
from train.optim import build_optimizer, build_scheduler
from train.parallel.world import set_numerics
from train.stages import STAGES, stage_data

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def pick_device(choice: str) -> torch.device:
    """auto: CUDA when available, as parallel.device=auto picks."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def trainer_numerics(device: torch.device) -> None:
    """The process-wide numerics the trainer sets at start (train/parallel/world.py: set_numerics, with the
    defaults), for the peer as for ours. Call it before any tensor op: the OpenMP threads copy the flush
    setting when they start."""
    set_numerics(ParallelConfig(), device)


def where(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(config, count: int, batch_size: int, device: torch.device) -> list:
    """`count` pre-training batches of `batch_size` windows of config.data's corpus, on the device."""
    data = stage_data(STAGES["pretrain"], config)
    return [to_device(data.collate([data.train[i * batch_size + j] for j in range(batch_size)]), device, False)
            for i in range(count)]


def peak(device: torch.device) -> dict:
    """precision -> the matmul TFLOP/s MFU is relative to (train.metrics: measured on a CPU, the datasheet's on a GPU)."""
    return {name: peak_tflops(LoggingConfig(), device, dtype) for name, dtype in PRECISIONS.items()}


def peer_step(model: torch.nn.Module, config: TrainConfig, precision: str, device: torch.device):
    """A function training `model` one step on a batch (AdamW and its schedule as `config` says for ours) and
    returning its loss, detached."""
    optimizer = build_optimizer(model, config.optim, device)
    scheduler = build_scheduler(optimizer, config.optim, config.trainer.max_steps)

    def step(batch) -> torch.Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            logits_BTV = model(input_ids=batch["inputs"]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits_BTV.flatten(0, 1), batch["targets"].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def minor_faults() -> int:
    """This process's minor page faults so far: pages the kernel mapped in at their first touch (memory that
    malloc took fresh from the kernel, e.g. any tensor above glibc's mmap threshold)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved_times(steps: dict, data: list, warmup: int, device: torch.device, faults: dict | None = None) -> dict:
    """Seconds of every step of each of `steps` (name -> function of a batch), timed batch by batch. The sides
    take turns on every batch, the order reversed from one batch to the next, so a machine shared with other
    work slows them alike (and the i-th times of two sides were taken side by side); the first `warmup`
    batches are not timed. `faults`, where given, gets each side's minor page faults of every timed step."""
    times = {name: [] for name in steps}
    for index, batch in enumerate(data):
        for name in list(steps)[:: 1 - 2 * (index % 2)]:
            synchronize(device)
            faulted, started = minor_faults(), time.perf_counter()  # the getrusage call outside the timed span
            steps[name](batch)
            synchronize(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - started)
                if faults is not None:
                    faults.setdefault(name, []).append(minor_faults() - faulted)
    return times


def paired_ratio(times: list, reference: list) -> float:
    """How many times faster `times` are than `reference`: the median over batches of reference / times, each
    pair timed side by side (more robust on a busy machine than a ratio of two medians)."""
    return statistics.median(r / t for t, r in zip(times, reference))
