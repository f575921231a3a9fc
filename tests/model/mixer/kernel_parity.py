"""GPU check of the linear mixers' library kernels (fla, mamba_ssm, causal_conv1d; kernels.py) against the
PyTorch path, for one Gated DeltaNet and one Mamba2 layer of Qwen3-Next / Mamba2 sizes at a long packed
context, forward and backward. Not collected by pytest (CI has no GPU); a GPU check script runs

    python -c "from tests.model.mixer.kernel_parity import main; main()"

Each layer runs three times with the same weights and input: the PyTorch path in fp32 (the reference),
the PyTorch path in bf16 and the kernels in bf16. The kernels pass when their relative error (in the
norm, of the output, the input gradient and every parameter gradient) is within twice the PyTorch bf16
path's plus 1e-2: the kernels may round differently, not compute something else.
"""

import time

import torch

from train.model.config import GatedDeltaNetConfig, Mamba2Config, MixerConfig, ModelConfig, NormConfig
from train.model.documents import Documents
from train.model.mixer import build_mixer, kernels

LAYERS = {  # kind -> (the mixer config, the libraries its kernel path needs)
    "gated_deltanet": (MixerConfig(kind="gated_deltanet", gated_deltanet=GatedDeltaNetConfig()), ("fla", "causal_conv1d")),
    "mamba2": (MixerConfig(kind="mamba2", mamba2=Mamba2Config()), ("mamba_ssm", "causal_conv1d")),
}
DIM = 2048
LENGTHS = ([3000, 1, 517, 8000, 64, 4802], [16384])  # per row, summing to T: documents across chunk edges


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()


def run(mixer, x_BTD, documents, weight_BTD):
    """Output and the gradients of (out * weight).sum(): {name: tensor}, with the seconds of one fwd + bwd."""
    mixer.zero_grad()
    x_BTD = x_BTD.detach().requires_grad_()
    torch.cuda.synchronize()
    start = time.perf_counter()
    out_BTD = mixer(x_BTD, None, documents)
    (out_BTD.float() * weight_BTD).sum().backward()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"out": out_BTD.detach(), "x.grad": x_BTD.grad, **{f"{n}.grad": p.grad for n, p in mixer.named_parameters()}}, seconds


def compare_kernels_to_torch(kind: str, lengths=LENGTHS, device: str = "cuda") -> dict:
    """{tensor name: (kernel bf16 error, torch bf16 error)} against the fp32 PyTorch path, plus the
    seconds of one fwd + bwd under "seconds": (kernels, torch bf16)."""
    config, libraries = LAYERS[kind]
    missing = [name for name in libraries if not kernels.available()[name]]
    if missing:
        raise RuntimeError(f"{kind}: {missing} not importable; pip install them on this GPU machine (see kernels.py)")
    T = sum(lengths[0])
    doc_ids_BT = torch.stack([torch.repeat_interleave(torch.arange(len(ls)), torch.tensor(ls)) for ls in lengths]).to(device)
    torch.manual_seed(0)
    reference = build_mixer(config, ModelConfig(dim=DIM, linear_kernels="torch", norm=NormConfig(eps=1e-6)), 0)
    reference.reset_extra_parameters()
    x_BTD = torch.randn(len(lengths), T, DIM)
    weight_BTD = torch.randn(len(lengths), T, DIM, device=device)
    results, seconds = {}, {}
    for name, choice, dtype in (("ref", "torch", torch.float32), ("torch", "torch", torch.bfloat16), ("kernels", "auto", torch.bfloat16)):
        mixer = build_mixer(config, ModelConfig(dim=DIM, linear_kernels=choice, norm=NormConfig(eps=1e-6)), 0)
        mixer.load_state_dict(reference.state_dict())
        mixer.to(device, dtype)
        x = x_BTD.to(device, dtype)
        if name == "kernels":
            assert all(kernels.runs(choice, library, x) for library in libraries), "the kernel path was not taken"
        run(mixer, x, Documents(doc_ids_BT), weight_BTD)  # warm-up: Triton compiles and autotunes on first use
        results[name], seconds[name] = run(mixer, x, Documents(doc_ids_BT), weight_BTD)
        del mixer
    report = {key: (relative_error(results["kernels"][key], expected), relative_error(results["torch"][key], expected))
              for key, expected in results["ref"].items()}
    report["seconds"] = (seconds["kernels"], seconds["torch"])
    return report


def main() -> None:
    failures = []
    for kind in LAYERS:
        report = compare_kernels_to_torch(kind)
        kernel_s, torch_s = report.pop("seconds")
        print(f"{kind}: one fwd+bwd {kernel_s * 1e3:.0f} ms with kernels, {torch_s * 1e3:.0f} ms in PyTorch (bf16)")
        for key, (kernel_err, torch_err) in report.items():
            ok = kernel_err <= 2 * torch_err + 1e-2
            print(f"  {key:28s} kernels {kernel_err:.2e}  torch bf16 {torch_err:.2e}  {'ok' if ok else 'FAIL'}")
            if not ok:
                failures.append(f"{kind} {key}")
    if failures:
        raise SystemExit(f"kernels differ from the PyTorch reference: {failures}")
