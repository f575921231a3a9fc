"""train/metrics.py: the MFU peak table, the memory figures (CPU; CUDA names and state stubbed), and what a resume does to metrics.jsonl and the W&B run."""

import json

import pytest
import torch

from train.config import LoggingConfig, WandbConfig
from train.metrics import MetricsLogger, gpu_peak_tflops, memory_stats, peak_tflops, reset_memory_stats

BF16, FP32 = torch.bfloat16, torch.float32


@pytest.mark.parametrize("name, bf16, tf32, fp32", [
    ("NVIDIA H100 80GB HBM3", 989.0, 495.0, 67.0),  # SXM
    ("NVIDIA H100 PCIe", 756.0, 378.0, 51.0),
    ("NVIDIA H100 NVL", 835.0, 418.0, 60.0),
    ("NVIDIA H200", 989.0, 495.0, 67.0),
    ("NVIDIA H200 NVL", 835.0, 418.0, 60.0),
    ("NVIDIA B200", 2250.0, 1125.0, 75.0),
    ("NVIDIA A100-SXM4-80GB", 312.0, 156.0, 19.5),
    ("NVIDIA A100 80GB PCIe", 312.0, 156.0, 19.5),
    ("NVIDIA L40S", 362.0, 183.0, 91.6),
    ("NVIDIA A10", 125.0, 62.5, 31.2),
])
def test_datasheet_peaks_by_device_name(name, bf16, tf32, fp32):
    assert gpu_peak_tflops(name, BF16, tf32=True) == bf16
    assert gpu_peak_tflops(name, BF16, tf32=False) == bf16
    assert gpu_peak_tflops(name, FP32, tf32=True) == tf32
    assert gpu_peak_tflops(name, FP32, tf32=False) == fp32


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA GH200 480GB", "NVIDIA GeForce RTX 4090"])
def test_unknown_gpus_have_no_peak(name):
    """Names that contain a known one (A10 in A10G, H200 in GH200) do not borrow its figures."""
    assert gpu_peak_tflops(name, BF16, tf32=True) != gpu_peak_tflops(name, BF16, tf32=True)  # NaN


@pytest.mark.parametrize("precision, tf32, expected", [("high", True, 495.0), ("highest", False, 67.0)])
def test_cuda_peak_reads_the_device_name_and_the_tf32_setting(monkeypatch, precision, tf32, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: precision)
    cuda = torch.device("cuda", 0)
    assert peak_tflops(LoggingConfig(), cuda, FP32) == expected
    assert peak_tflops(LoggingConfig(), cuda, BF16) == 989.0
    assert peak_tflops(LoggingConfig(peak_tflops=123.0), cuda, BF16) == 123.0


def test_cpu_memory_is_the_peak_resident_size():
    cpu = torch.device("cpu")
    reset_memory_stats(cpu)  # nothing to reset on CPU
    stats = memory_stats(cpu)
    assert set(stats) == {"memory_gb"} and 0 < stats["memory_gb"] < 1e4


def test_cuda_memory_figures_from_the_allocator(monkeypatch):
    raw = {"allocated_bytes.all.peak": 3e9, "reserved_bytes.all.peak": 4e9, "num_alloc_retries": 2, "num_ooms": 0}
    calls = []
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: raw)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("peaks"))
    monkeypatch.setattr(torch.cuda, "reset_accumulated_memory_stats", lambda device=None: calls.append("counts"))
    cuda = torch.device("cuda", 0)
    assert memory_stats(cuda) == {"memory_gb": 3.0, "memory_reserved_gb": 4.0, "alloc_retries": 2, "ooms": 0}
    reset_memory_stats(cuda)
    assert calls == ["peaks", "counts"]


def logger(tmp_path, resume_step, mode="disabled"):
    return MetricsLogger(tmp_path, LoggingConfig(wandb=WandbConfig(mode=mode)), {}, resume_step, True, "pretrain")


def test_resume_keeps_the_records_up_to_the_checkpoint_and_drops_a_torn_last_line(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    logger(tmp_path, resume_step=3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert "dropped 2 later one(s) and a torn last line" in capsys.readouterr().out
    assert not list(tmp_path.glob(".metrics.jsonl.tmp*"))  # rewritten through a temporary file


def test_a_damaged_line_before_the_last_names_the_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        logger(tmp_path, resume_step=2)


@pytest.mark.parametrize("mode, later_steps, expected", [
    ("online", True, {"resume_from": "RUNID?_step=3"}),  # a crash: rewind the dashboard to the checkpoint
    ("online", False, {"id": "RUNID", "resume": "allow"}),  # a requeue: nothing to rewind
    ("offline", True, {"id": "RUNID", "resume": "allow"}),  # offline runs cannot rewind before sync
])
def test_wandb_is_rewound_to_the_resumed_step_after_a_crash(tmp_path, monkeypatch, mode, later_steps, expected):
    import sys
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.append(kw)))
    (tmp_path / "wandb_run_id").write_text("RUNID")
    last = 5 if later_steps else 3
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, last + 1)))
    logger(tmp_path, resume_step=3, mode=mode)
    (call,) = calls
    assert {k: call[k] for k in ("id", "resume", "resume_from") if k in call} == expected
