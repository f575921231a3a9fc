"""Expert parallelism on 2 and 4 gloo ranks against one process (the reference: the same MoE with
all experts and all tokens in one process). Spawned with torch.multiprocessing; OMP_NUM_THREADS=1."""

import os

import pytest
import torch
import torch.distributed as dist

from tests.train_helpers import spawn

pytestmark = pytest.mark.slow

MOE = {"kind": "moe", "moe": {"num_experts": 8, "hidden_dim": 24, "num_zero_experts": 2, "shared_hidden_dim": 16, "shared_gate": True,
                              "router": {"kind": "softmax", "top_k": 3, "renormalize": False, "aux_loss_coef": 0.01,
                                         "aux_loss_kind": "sequence", "z_loss_coef": 0.001,
                                         "score_correction_bias": True, "bias_update_speed": 0.01}}}
OVERRIDES = {"ffns.moe": MOE, "layer_ffns": ["moe"], "vocab_size": 128, "init_std": 0.1}


def setup(rank, world, port, ep=1):
    """The process group and the meshes of `ep`-way expert parallelism over `world` ranks."""
    from train.config import ParallelConfig
    from train.model import load_preset
    from train.parallel.dims import ParallelDims
    from train.parallel.world import World

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return ParallelDims.build(ParallelConfig(ep=ep), World(rank, rank, world, torch.device("cpu")),
                              load_preset("qwen3_moe_tiny"))


def sharp_model(capacity_factor=None):
    from train.model import build_model

    torch.manual_seed(0)
    moe = {**MOE, "moe": {**MOE["moe"], "capacity_factor": capacity_factor}}
    model = build_model("qwen3_moe_tiny", **{**OVERRIDES, "ffns.moe": moe})
    with torch.no_grad():  # sharp, tie-free routing
        for m in model.moe_layers():
            m.router.gate.weight.normal_(0, 1.0)
    return model


def layer_worker(rank, world, port, ep, capacity_factor, pad, out):
    dims = setup(rank, world, port, ep)
    import train.model.moe.layer as moe_layer
    import train.parallel.expert as expert_parallel

    if pad:  # each expert's group padded to 4 rows, as bf16 on the CPU pads to 32: the pad slots travel too
        moe_layer.group_multiple = lambda x: pad

    B, T, D = 2, 16, 64
    x_WBTD = torch.randn(world, B, T, D, generator=torch.Generator().manual_seed(1))
    g_WBTD = torch.randn(world, B, T, D, generator=torch.Generator().manual_seed(2))
    reference = sharp_model(capacity_factor).layers[0].ffn
    x_ref = x_WBTD.reshape(world * B, T, D).clone().requires_grad_()
    # each rank's tokens are one forward (a capacity counts a rank's own tokens)
    y_ref = torch.cat([reference(x_ref[w * B : (w + 1) * B]) for w in range(world)])
    (y_ref * g_WBTD.reshape(world * B, T, D)).sum().backward()

    model = sharp_model(capacity_factor)
    expert_parallel.apply_expert_parallel(model, dims)
    moe = model.layers[0].ffn
    splits = []
    real = expert_parallel.all_to_all_single_autograd
    expert_parallel.all_to_all_single_autograd = lambda x, out_s, in_s, g: splits.append((in_s, out_s)) or real(x, out_s, in_s, g)
    x = x_WBTD[rank].clone().requires_grad_()
    y = moe(x)
    moe.record_loads()  # what the Transformer does after its forward
    (y * g_WBTD[rank]).sum().backward()
    expert_parallel.all_to_all_single_autograd = real

    errors = {}
    errors["output"] = (y - y_ref.detach().view(world, B, T, D)[rank]).abs().max().item()
    errors["input_grad"] = (x.grad - x_ref.grad.view(world, B, T, D)[rank]).abs().max().item()
    local = moe.experts.num_experts
    ep_rank = dist.get_rank(dims.ep_group)
    for name, param in moe.experts.named_parameters():
        grad = param.grad.clone()
        dist.all_reduce(grad, group=dims.edp_mesh.get_group())  # replicas of the same experts saw other tokens
        full = getattr(reference.experts, name).grad[ep_rank * local : (ep_rank + 1) * local]
        errors[f"grad {name}"] = (grad - full).abs().max().item()
    for name, param in [("router", moe.router.gate.weight), ("shared", moe.shared_expert.up_proj.weight)]:
        grad = param.grad.clone()
        dist.all_reduce(grad)
        ref_param = reference.router.gate.weight if name == "router" else reference.shared_expert.up_proj.weight
        errors[f"grad {name}"] = (grad - ref_param.grad).abs().max().item()
    routed = int(moe.choice_counts[: moe.num_experts].sum())
    zero = int(moe.choice_counts[moe.num_experts :].sum())
    torch.save({"errors": errors, "sent": sum(splits[0][0]), "routed": routed, "zero": zero, "assignments": B * T * 3,
                "dropped": int(moe.dropped_count), "local_experts": local}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("world,ep,capacity_factor,pad", [(2, 2, None, 0), pytest.param(4, 2, None, 0, marks=pytest.mark.heavy),
                                                         pytest.param(4, 4, None, 0, marks=pytest.mark.heavy), (2, 2, 0.6, 0), (2, 2, 0.6, 4)])
def test_expert_parallel_layer_matches_one_process(world, ep, capacity_factor, pad, tmp_path):
    """pad: the experts' groups padded by pad slots (train/model/moe/layer.py) on the ranks, not in the reference."""
    spawn(layer_worker, world, ep, capacity_factor, pad, str(tmp_path))
    for rank in range(world):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert result["local_experts"] == 8 // ep
        for what, error in result["errors"].items():
            assert error < 1e-5, (rank, what, error)
        # zero-expert choices never enter the all-to-all, nor do dropped ones: only the kept routed rows are sent
        assert result["zero"] > 0 and (result["dropped"] > 0) == (capacity_factor is not None)
        assert result["routed"] == result["assignments"] - result["zero"]
        if pad:  # every expert's group of this rank's rows is a multiple of `pad`, so is their sum
            assert result["sent"] % pad == 0 and result["sent"] > result["routed"] - result["dropped"]
        else:
            assert result["sent"] == result["routed"] - result["dropped"]


def train_worker(rank, world, port, ep, steps, out):
    dims = setup(rank, world, port, ep)
    from torch.distributed.fsdp import fully_shard

    from train.parallel.expert import apply_expert_parallel, shard_experts

    B, T = 2, 16
    ids = torch.randint(0, 128, (steps, world * B, T + 1), generator=torch.Generator().manual_seed(3))

    def step_loss(model, batch):
        logits = model(batch[:, :-1])
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        return ce + model.aux_loss()

    losses = {"reference": [], "ep": []}
    reference = sharp_model()
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    for s in range(steps):
        loss = step_loss(reference, ids[s])
        loss.backward()
        opt.step()
        opt.zero_grad()
        reference.update_router_bias(reference.expert_loads())
        reference.reset_expert_loads()
        losses["reference"].append(loss.item())

    model = sharp_model()
    apply_expert_parallel(model, dims)
    shard_experts(model, dims)
    for block in model.layers:
        fully_shard(block, mesh=dims.dp_mesh)
    fully_shard(model, mesh=dims.dp_mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for s in range(steps):
        loss = step_loss(model, ids[s, rank * B : (rank + 1) * B])
        loss.backward()
        opt.step()
        opt.zero_grad()
        loads = model.expert_loads()
        for load in loads:
            dist.all_reduce(load)
        model.update_router_bias(loads)
        model.reset_expert_loads()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses["ep"].append(mean.item() / world)
    torch.save(losses, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_fsdp_plus_expert_parallel_training_matches_one_process(tmp_path):
    """ep=2 on 2 ranks: experts sharded over edp, dense parameters over dp, plain AdamW, aux losses and
    the aux-free bias step from all-reduced loads: the same losses as one process on the whole batch."""
    spawn(train_worker, 2, 2, 4, str(tmp_path))
    losses = torch.load(tmp_path / "0.pt")
    assert losses["reference"][0] != losses["reference"][-1]
    torch.testing.assert_close(torch.tensor(losses["ep"]), torch.tensor(losses["reference"]), atol=1e-5, rtol=0)
