"""Print a model's parameters, training FLOPs per token and KV-cache size.

    python -m train.inspect model=llama3 context=8192 dtype=bf16
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
from common.numbers import count, nbytes
from common.paths import CONFIGS_DIR
from train.model.config import ModelConfig, load_preset, to_model_config
from train.model.summary import COMPONENTS, Summary, summarize


@dataclass
class InspectConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    context: Optional[int] = None  # tokens; default: each model's max_seq_len
    dtype: str = "bf16"  # of the KV cache: fp32 | bf16 | fp16 | fp8
    compare: List[str] = field(default_factory=list)  # preset names shown side by side (replaces `model`)


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


def format_table(names: list[str], summaries: list[Summary]) -> str:
    labels = [label for label, _ in rows(summaries[0])]
    columns = [[value for _, value in rows(s)] for s in summaries]
    table = [["", *names]] + [[label, *values] for label, *values in zip(labels, *columns)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]) for row in table]
    note = ("FLOPs: PaLM convention (Chowdhery et al. 2022, App. B): 6 x active matmul params + 12 x layers x heads x head_dim x T\n"
            "for softmax attention; linear/SSM mixers add a context-independent recurrent-form term. MoE: a token uses\n"
            "top_k x (1 - rho) routed experts, rho = share of choices taken by zero experts, by default Z / (E + Z).\n"
            "Hyper-connections add their stream mixing; MTP modules train (their FLOPs count) but are not in the totals.")
    return "\n".join(lines + [note])


@hydra.main(config_path=str(CONFIGS_DIR), config_name="inspect", version_base=None)
def main(cfg: InspectConfig) -> None:
    if cfg.compare:
        names, configs = list(cfg.compare), [load_preset(name) for name in cfg.compare]
    else:
        names, configs = [HydraConfig.get().runtime.choices.get("model", "model")], [to_model_config(cfg.model)]
    print(format_table(names, [summarize(c, cfg.context, cfg.dtype) for c in configs]))


if __name__ == "__main__":
    main()
