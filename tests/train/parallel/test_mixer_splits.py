"""The mixers context and tensor parallelism split, model by model against the whole model on one process
(no trainer): under CP (2 ranks, zig-zag chunks of 64-token windows) Gated DeltaNet (the Qwen3-Next hybrid,
with its attention and MoE layers), Mamba2, kernel linear attention and the Falcon-H1 parallel hybrid,
with and without packed documents (starts on a chunk boundary and inside a convolution's reach of one);
under TP (2 ranks) MLA, whose shared rope key needs its gradient summed over the ranks. Each rank's output
and the gradients summed over the ranks (CP) or seen whole (TP) must equal the whole model's: outputs
within 1e-5 of the largest, gradients within 5e-5 of each tensor's largest (Gated DeltaNet's A_log and
dt_bias gradients sum many cancelling terms: on one process they move by 1.2e-5 when the convolution
runs through its document-masked taps instead of F.conv1d, by 2e-4 with 64-token instead of 8-token chunks;
the split model gives 8.6e-6, everything else below 2e-6).

One spawn of 2 gloo processes runs every case: 26-31 s on 2 cores shared with other jobs (load ~4).
"""

import copy
import os

import pytest
import torch

from tests.model_helpers import perturbed
from tests.train_helpers import spawn

pytestmark = pytest.mark.slow

B, T, VOCAB = 2, 64, 128
CP_MODELS = {  # chunks of 8 tokens: several scan chunks in each 16-token zig-zag chunk
    "gated_deltanet_hybrid": ("qwen3_next_tiny", {"mixers.linear.gated_deltanet.chunk_size": 8}),
    "mamba2": ("mamba2_tiny", {"mixers.ssm.mamba2.chunk_size": 8}),
    "linear_attention": ("llama3_tiny", {"mixers.full": {"kind": "linear_attention",
                                                         "linear_attention": {"num_heads": 4, "chunk_size": 8}}}),
    "parallel_hybrid": ("falcon_h1_tiny", {"mixers.hybrid.parallel_hybrid.mamba2.chunk_size": 8}),
}
CASES = [f"cp {name} {docs}" for name in CP_MODELS for docs in ("documents", "one document")] + ["tp mla"]


def batch():
    """Token ids [B, T] and document ids with starts at 16 (a chunk boundary under cp=2) and 34 (two
    tokens after one: the convolution's taps reach across the boundary into the previous document)."""
    ids_BT = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))
    starts_BT = torch.rand(B, T, generator=torch.Generator().manual_seed(2)) < 0.1
    starts_BT[:, [16, 34]] = True
    return ids_BT, starts_BT.long().cumsum(dim=1)


def whole_model(preset, overrides):
    from train.model import build_model

    torch.manual_seed(0)
    return perturbed(build_model(preset, vocab_size=VOCAB, **overrides))


def forward_backward(model, ids_BT, doc_ids_BT, cotangent_BTD):
    hidden_BTD = model.hidden_states(ids_BT, doc_ids_BT)
    (hidden_BTD * cotangent_BTD).sum().backward()
    return hidden_BTD.detach()


def relative(got, expected):
    return ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()


def context_parallel_errors(preset, overrides, with_documents):
    """Output and summed-gradient errors of the model with its windows split over the 2 ranks."""
    import torch.distributed as dist

    from train.parallel.context import ZigZagSplit

    model = whole_model(preset, overrides)
    ids_BT, doc_ids_BT = batch()
    doc_ids_BT = doc_ids_BT if with_documents else None
    cotangent_BTD = torch.randn(B, T, model.config.dim, generator=torch.Generator().manual_seed(3))
    reference_BTD = forward_backward(model, ids_BT, doc_ids_BT, cotangent_BTD)
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    split = model.sequence_split = ZigZagSplit(dist.group.WORLD)
    local_BTD = forward_backward(model, split.shard(ids_BT), None if doc_ids_BT is None else split.shard(doc_ids_BT),
                                 split.shard(cotangent_BTD))
    errors = {"output": relative(local_BTD, split.shard(reference_BTD))}
    for name, grad in reference.items():
        summed = model.get_parameter(name).grad.clone()
        dist.all_reduce(summed)
        errors[name] = relative(summed, grad)
    return errors


def tensor_parallel_mla_errors():
    """Output and gradient errors of deepseek_v3_tiny (MLA with q_lora, a dense and an MoE layer) with its
    layers split over the 2 ranks by the TP plan."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from train.parallel.tensor import apply_tensor_parallel

    model = whole_model("deepseek_v3_tiny", {})
    ids_BT, doc_ids_BT = batch()
    cotangent_BTD = torch.randn(B, T, model.config.dim, generator=torch.Generator().manual_seed(3))
    split_model = copy.deepcopy(model)
    reference_BTD = forward_backward(model, ids_BT, doc_ids_BT, cotangent_BTD)
    apply_tensor_parallel(split_model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)))
    errors = {"output": relative(forward_backward(split_model, ids_BT, doc_ids_BT, cotangent_BTD), reference_BTD)}
    for name, param in model.named_parameters():
        if param.grad is None:  # the output head: hidden_states does not use it
            continue
        grad = split_model.get_parameter(name).grad
        errors[name] = relative(grad.full_tensor() if isinstance(grad, DTensor) else grad, param.grad)
    return errors


def splits_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    errors = {}
    for name, (preset, overrides) in CP_MODELS.items():
        errors[f"cp {name} documents"] = context_parallel_errors(preset, overrides, with_documents=True)
        errors[f"cp {name} one document"] = context_parallel_errors(preset, overrides, with_documents=False)
    errors["tp mla"] = tensor_parallel_mla_errors()
    torch.save(errors, os.path.join(out, f"errors_{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
    out = tmp_path_factory.mktemp("splits")
    spawn(splits_worker, 2, str(out))
    return [torch.load(out / f"errors_{rank}.pt") for rank in range(2)]


@pytest.mark.parametrize("case", CASES)
def test_split_model_equals_the_whole_model(errors, case):
    for rank, by_rank in enumerate(errors):
        found = by_rank[case]
        assert len(found) > 10  # the output and every parameter's gradient
        for what, error in found.items():
            assert error < (1e-5 if what == "output" else 5e-5), (rank, case, what, error)
