"""The zoo-III presets at real size on the meta device, and the inspector's numbers for the new parts
against arithmetic by hand (and transformers' GPT-J)."""

import subprocess
import sys

import pytest
import torch

from common.paths import REPO
from train.model import build_model, load_preset
from train.model.config import apply_overrides
from train.model.summary import summarize


@pytest.mark.parametrize("preset", ["llama3_dyt", "llama3_mhc", "gptj_6b", "deepseek_v3_mtp"])
def test_zoo3_presets_build_on_meta(preset):
    with torch.device("meta"):
        model = build_model(preset)
    if not model.moe_layers():
        assert model(torch.zeros(1, 4, dtype=torch.long, device="meta")).shape == (1, 4, model.config.vocab_size)


def test_gptj_is_transformers_gptj_without_the_head_bias():
    from transformers import GPTJConfig, GPTJForCausalLM

    with torch.device("meta"):
        theirs = GPTJForCausalLM(GPTJConfig())  # the defaults are GPT-J 6B's
    s = summarize(load_preset("gptj_6b"), context=2048)
    assert s.params_total == sum(p.numel() for p in theirs.parameters()) - 50400 == 6_050_832_384
    D, L = 4096, 28
    assert s.params["norms"] == (L + 1) * 2 * D  # one LayerNorm per parallel block (weight and bias) + the final


def test_llama3_mhc_counts_its_connections():
    n, D, L = 4, 4096, 32
    per_sublayer = (2 + n) * n * n * D + (2 + n) * n + 3  # fn, base, scale
    head = n * n * D + n + 1
    s, plain = summarize(load_preset("llama3_mhc"), context=8192), summarize(load_preset("llama3"), context=8192)
    assert s.params["residual"] == 2 * L * per_sublayer + head
    assert s.params_total == plain.params_total + s.params["residual"]
    assert s.matmul_params == plain.matmul_params + 2 * L * (2 + n) * n * n * D + n * n * D
    mixing = 2 * L * (n * n + 2 * n) * D + n * D  # multiply-adds of pre, comb, post; the head's pre
    assert s.residual_flops_per_token == 6 * mixing
    assert s.flops_per_token == plain.flops_per_token + 6 * (s.matmul_params - plain.matmul_params) + 6 * mixing
    assert s.residual_stream_bytes_per_token == n * D * 2 and plain.residual_stream_bytes_per_token == D * 2
    assert s.kv_bytes_total == plain.kv_bytes_total


def test_dyt_hyper_connections_and_scales_are_counted():
    base = load_preset("llama3_tiny")  # dim 64, 2 layers
    dyt = summarize(apply_overrides(base, {"norm.kind": "dyt"}))
    assert dyt.params["norms"] == (2 * 2 + 1) * (64 + 64 + 1)  # weight, bias, alpha
    hc = summarize(apply_overrides(base, {"residual.hyper_connections.kind": "dynamic"}))
    n, D = 4, 64  # static [n, n+1] + [n]; dynamic fns [D, n+1] + [D], scales, its RMSNorm [D]
    assert hc.params["residual"] == 4 * (n * (n + 1) + n + D * (n + 1) + D + 2 + D)
    assert hc.residual_flops_per_token == 6 * (4 * ((n + 1) * n * D + n * D) + n * D)
    scale = summarize(apply_overrides(base, {"residual.branch_scale": "layerscale", "residual.value_residual": True}))
    assert scale.params["residual"] == 4 * D + 2  # 4 gammas, one lambda pair (layer 1)


def test_mtp_modules_train_but_are_not_in_the_totals():
    V, D, T = 129280, 7168, 4096
    s, main = summarize(load_preset("deepseek_v3_mtp"), context=T), summarize(load_preset("deepseek_v3"), context=T)
    assert s.params_total == main.params_total and s.kv_bytes_total == main.kv_bytes_total
    assert s.mtp_params > 2 * D * D + 11e9  # eh_proj + an MoE layer of 256 experts of 3 x 7168 x 2048 (11.3B)
    assert 13.3e9 < s.mtp_params + 2 * V * D < 14.5e9  # DeepSeek's "14B", which stores the embedding and head again
    assert s.flops_per_token == main.flops_per_token + s.mtp_flops_per_token
    active_block = (main.params_active - 2 * V * D - D) / 61  # a rough layer: the MTP FLOPs are ~ one layer + head
    assert 0.8 < s.mtp_flops_per_token / (6 * (active_block + V * D)) < 1.6


def test_cli_shows_the_new_rows():
    out = subprocess.run([sys.executable, "-m", "train.inspect", "compare=[llama3,llama3_mhc,deepseek_v3_mtp]",
                          "context=4096"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "residual (hyper-conn., scales)" in out and "MTP modules (training only)" in out and "32.00 KiB" in out
