"""Peak host memory per rank while 2 gloo ranks load a Hugging Face folder into an FSDP2-sharded model:
the broadcast path (rank 0 loads the whole model, set_model_state_dict(full_state_dict,
broadcast_from_rank0), what build_model did before) against read_local_shards (each rank reads only its
shard rows with safetensors slices, what build_model does now).

    python bench/load_memory.py [--dim 2048] [--layers 16] [--vocab 32000] [--ffn 8192] [--folder /tmp/load_memory_hf]

Writes (once) a random Llama-shaped checkpoint in bf16 as a sharded folder (model-0000i-of-0000n.safetensors
+ model.safetensors.index.json + config.json); the defaults are Llama 3.2 1B's shape with a 32k vocabulary
(1.1B parameters). Each path runs in its own pair of fresh processes (peak RSS only grows); the peak is
VmHWM of /proc/self/status read at the end (RSS before: after building the empty sharded model, torch
included), the shard is the rank's fp32 parameters. Prints one table.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402

from train.model.config import apply_overrides, load_preset  # noqa: E402
from train.model.hf import INDEX_FILE, hf_config  # noqa: E402
from train.model.hf.llama import WEIGHTS  # noqa: E402
from train.model.hf.weights import to_hf  # noqa: E402
from train.model.transformer import Transformer  # noqa: E402

GB = 1e9


def write_checkpoint(folder: Path, args) -> int:
    """A random bf16 Llama checkpoint in files of about 1 GB; its parameter count."""
    config = apply_overrides(load_preset("llama3"), {
        "dim": args.dim, "num_layers": args.layers, "vocab_size": args.vocab, "ffns.swiglu.hidden_dim": args.ffn,
        "mixers.full.attention.num_heads": args.dim // 64, "mixers.full.attention.head_dim": 64,
        "mixers.full.attention.num_kv_heads": min(8, args.dim // 64)})
    with torch.device("meta"):
        shapes = to_hf(Transformer(config).state_dict(), WEIGHTS, config.num_layers)
    total = sum(t.numel() for t in shapes.values())
    if (folder / INDEX_FILE).is_file():
        return total
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(config), indent=2))
    shards, weight_map = [{}], {}
    for name, meta in shapes.items():
        if sum(t.numel() * 2 for t in shards[-1].values()) + meta.numel() * 2 > 1e9 and shards[-1]:
            shards.append({})
        shards[-1][name] = meta
    generator = torch.Generator().manual_seed(0)
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: (torch.randn(t.shape, generator=generator) * 0.02).to(torch.bfloat16) for k, t in shard.items()}, folder / file)
        weight_map.update({k: file for k in shard})
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total * 2}, "weight_map": weight_map}))
    return total


def memory(field: str) -> float:
    """VmHWM (the peak resident set) or VmRSS (now) of this process, in GB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[field].split()[0]) * 1024 / GB


def rank_main(rank: int, path: str, folder: str, port: int, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from train import stages
    from train.config import TrainConfig
    from train.model.load import model_config
    from train.parallel.dims import ParallelDims
    from train.parallel.fsdp import parallelize
    from train.parallel.world import init_world
    from train.trainer import read_local_shards

    config = TrainConfig()
    config.init.weights, config.model = folder, model_config(folder)
    world = init_world(config.parallel)
    dims = ParallelDims.build(config.parallel, world, config.model)
    with torch.device("meta"):
        model = Transformer(config.model)
    model = parallelize(model, config.parallel, dims)
    model.to_empty(device="cpu")
    shard = sum(p.to_local().numel() * p.element_size() for p in model.parameters()) / GB
    before, started = memory("VmRSS"), time.perf_counter()  # torch and the process: what loading adds to
    if path == "broadcast":
        full = stages.initial_model(config).state_dict() if rank == 0 else {}
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full
    else:
        read_local_shards(model, folder, config.model)
    torch.distributed.barrier()
    results.put((path, rank, shard, before, memory("VmHWM"), time.perf_counter() - started))
    dims.close()
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--ffn", type=int, default=8192)
    parser.add_argument("--folder", default="/tmp/load_memory_hf")
    args = parser.parse_args()
    params = write_checkpoint(Path(args.folder), args)
    context, rows = mp.get_context("spawn"), []
    for i, path in enumerate(("broadcast", "local shards")):
        results = context.Queue()
        procs = [context.Process(target=rank_main, args=(r, path, args.folder, 29611 + i, results)) for r in range(2)]
        for p in procs:
            p.start()
        rows += [results.get() for _ in procs]
        for p in procs:
            p.join()
    print(f"{params / 1e9:.2f}B parameters, bf16 on disk ({params * 2 / GB:.2f} GB), 2 gloo ranks, fp32 shards")
    print(f"{'path':<14}{'rank':>5}{'shard GB':>10}{'RSS before':>12}{'peak RSS':>10}{'(peak-before)/shard':>21}{'seconds':>9}")
    for path, rank, shard, before, peak, seconds in sorted(rows, key=lambda r: (r[0] != "broadcast", r[1])):
        print(f"{path:<14}{rank:>5}{shard:>10.2f}{before:>12.2f}{peak:>10.2f}{(peak - before) / shard:>21.2f}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
