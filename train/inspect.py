"""Print a model's parameters, training FLOPs per token and KV-cache size, and the memory each device
needs to train it under a layout (train/parallel/memory.py: "will it fit").

    python -m train.inspect model=llama3 context=8192 dtype=bf16
    python -m train.inspect model=llama3 context=131072 devices=64 parallel.tp=8 parallel.cp=4 micro_batch=1
    python -m train.inspect model=llama3 context=8192 devices=64 parallel.tp=8 parallel.pp=4
    python -m train.inspect model=llama3_tiny model.mixers.full.attention.num_kv_heads=1
    python -m train.inspect compare=[gpt2,llama3,qwen3]
    python -m train.inspect compare=[llama3,deepseek_v3,qwen3_next,mamba2,falcon_h1] context=131072
    python -m train.inspect compare=[qwen3_moe,deepseek_v3,kimi_k2,gpt_oss,longcat_flash,qwen3_next] context=4096
    python -m train.inspect compare=[llama3,llama3_dyt,llama3_hc,gptj_6b,deepseek_v3_mtp] context=4096

The numbers come from train.model.summary.summarize; this file only formats them.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from common.errors import one_line_errors
from common.numbers import count, nbytes
from common.paths import CONFIGS_DIR
from train.config import ParallelConfig
from train.model.config import ModelConfig, load_preset, to_model_config
from train.model.summary import COMPONENTS, Summary, summarize
from train.parallel.memory import MemoryEstimate, estimate_memory


@dataclass
class InspectConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    context: Optional[int] = None  # tokens; default: each model's max_seq_len
    dtype: str = "bf16"  # of the KV cache: fp32 | bf16 | fp16 | fp8
    compare: List[str] = field(default_factory=list)  # preset names shown side by side (replaces `model`)
    # the training layout of the memory estimate: parallel.tp, parallel.cp, parallel.pp, parallel.dp_shard, ... as in training
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    devices: Optional[int] = None  # world size; default: the product of the parallel sizes (dp_shard=-1 counts 1)
    micro_batch: int = 1  # sequences of `context` tokens per forward on each data-parallel rank
    loss_chunk_tokens: int = 512  # trainer.loss_chunk_tokens


ConfigStore.instance().store(name="inspect_schema", node=InspectConfig)


def rows(s: Summary) -> list[tuple[str, str]]:
    per_layer = sorted(set(s.kv_bytes_per_token_per_layer))
    return [
        ("parameters (total)", f"{count(s.params_total)} ({s.params_total:,})"),
        *[(f"  {c.replace('_', ' ')}", count(s.params[c])) for c in COMPONENTS],
        ("  residual (hyper-conn., scales)", count(s.params.get("residual", 0))),
        ("MTP modules (training only)", count(s.mtp_params)),
        ("parameters (active per token)", count(s.params_active)),
        ("  routed experts/token (MoE)", " / ".join(f"{k:g}" for k in sorted(set(s.routed_experts_per_token))) or "-"),
        ("matmul parameters N (active)", f"{count(s.matmul_params_active)} of {count(s.matmul_params)}"),
        ("context T", f"{s.context:,}"),
        ("train FLOPs/token (6N + attn)", count(s.flops_per_token)),
        ("  attention scores at T", count(s.attention_flops_per_token)),
        ("  residual stream mixing", count(s.residual_flops_per_token)),
        ("  MTP modules", count(s.mtp_flops_per_token)),
        (f"residual stream bytes/token ({s.dtype})", nbytes(s.residual_stream_bytes_per_token)),
        (f"KV bytes/token/layer ({s.dtype})", " / ".join(nbytes(b) for b in per_layer)),
        ("KV bytes/token (all layers)", nbytes(sum(s.kv_bytes_per_token_per_layer))),
        ("  MHA, same heads (all layers)", nbytes(s.mha_kv_bytes_per_token)),
        ("fixed state bytes (all layers)", nbytes(sum(s.state_bytes_per_layer))),
        (f"KV cache + state at T ({s.dtype})", nbytes(s.kv_bytes_total)),
    ]


def memory_rows(m: MemoryEstimate) -> list[tuple[str, str]]:
    return [
        ("layout", m.layout),
        ("tokens per device and forward", f"{m.tokens:,}"),
        ("parameters per device", count(m.params)),
        ("  weights (fp32 shards)", nbytes(m.weight_bytes)),
        ("  gradients (fp32 shards)", nbytes(m.grad_bytes)),
        ("  AdamW moments (2 x fp32)", nbytes(m.optimizer_bytes)),
        ("  gathered weights (FSDP; one process: autocast)", nbytes(m.gathered_bytes)),
        ("  activations (estimate)", nbytes(m.activation_bytes)),
        ("memory per device (training)", nbytes(m.total_bytes)),
    ]


def format_table(names: list[str], summaries: list[Summary], memories: list[MemoryEstimate]) -> str:
    def all_rows(s, m):
        return rows(s) + memory_rows(m)

    labels = [label for label, _ in all_rows(summaries[0], memories[0])]
    columns = [[value for _, value in all_rows(s, m)] for s, m in zip(summaries, memories)]
    table = [["", *names]] + [[label, *values] for label, *values in zip(labels, *columns)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]) for row in table]
    note = ("FLOPs: PaLM convention (Chowdhery et al. 2022, App. B): 6 x active matmul params + 12 x layers x heads x head_dim x T\n"
            "for softmax attention; linear/SSM mixers add a context-independent recurrent-form term. MoE: a token uses\n"
            "top_k x (1 - rho) routed experts, rho = share of choices taken by zero experts, by default Z / (E + Z).\n"
            "Memory: per device, for training with AdamW under the layout (train/parallel/memory.py; with parallel.pp, the\n"
            "busiest pipeline rank); activations assume attention without T x T scores (Flash/FlexAttention) and are an\n"
            "estimate (+-30%).\n"
            "Hyper-connections add their stream mixing; MTP modules train (their FLOPs count) but are not in the totals.")
    return "\n".join(lines + [note])


@hydra.main(config_path=str(CONFIGS_DIR), config_name="inspect", version_base=None)
def main(cfg: InspectConfig) -> None:
    with one_line_errors():
        print(inspect_table(cfg))


def inspect_table(cfg: InspectConfig) -> str:
    if cfg.compare:
        names, configs = list(cfg.compare), [load_preset(name) for name in cfg.compare]
    else:
        names, configs = [HydraConfig.get().runtime.choices.get("model", "model")], [to_model_config(cfg.model)]
    p = cfg.parallel
    devices = cfg.devices or p.pp * p.dp_replicate * max(p.dp_shard, 1) * p.cp * p.tp
    summaries = [summarize(c, cfg.context, cfg.dtype) for c in configs]
    memories = [estimate_memory(c, p, devices, s.context, cfg.micro_batch, cfg.loss_chunk_tokens)
                for c, s in zip(configs, summaries)]
    return format_table(names, summaries, memories)


if __name__ == "__main__":
    main()
