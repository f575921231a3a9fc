"""Inspector numbers against arithmetic worked out by hand from the published architectures."""

import subprocess
import sys

from train.model import load_preset
from train.model.summary import summarize
from common.paths import REPO



def test_llama3_8b():
    V, D, L, H, G, K, F, T = 128256, 4096, 32, 32, 8, 128, 14336, 8192
    attention = L * (D * H * K + 2 * D * G * K + H * K * D)
    ffn = L * 3 * D * F
    norms = (2 * L + 1) * D
    s = summarize(load_preset("llama3"), context=T, dtype="bf16")
    assert s.params == {"embeddings": V * D, "mixers": attention, "feed_forward": ffn, "norms": norms, "output_head": V * D}
    assert s.params_total == 8_030_261_248  # Llama-3-8B as published ("8.03B")
    assert s.matmul_params == attention + ffn + V * D
    assert s.flops_per_token == 6 * (attention + ffn + V * D) + 12 * L * H * K * T
    assert s.kv_bytes_per_token_per_layer == [2 * G * K * 2] * L  # k and v, 8 heads of 128, bf16
    assert s.kv_bytes_total == 2 * G * K * 2 * L * T == 2**30  # 1 GiB at 8k context


def test_gpt2_124m():
    V, D, L, P, T = 50257, 768, 12, 1024, 1024
    attention = L * (4 * D * D + 4 * D)  # c_attn + c_proj, with biases
    ffn = L * (8 * D * D + 4 * D + D)  # c_fc + c_proj, with biases
    s = summarize(load_preset("gpt2"), context=T, dtype="fp32")
    assert s.params == {"embeddings": V * D + P * D, "mixers": attention, "feed_forward": ffn,
                        "norms": (2 * L + 1) * 2 * D, "output_head": 0}
    assert s.params_total == 124_439_808  # HF "gpt2"
    assert s.matmul_params == L * 12 * D * D + V * D  # tied head still costs a matmul
    assert s.flops_per_token == 6 * (L * 12 * D * D + V * D) + 12 * L * 12 * 64 * T
    assert s.kv_bytes_total == 2 * D * 4 * L * T  # MHA: K and V of all 12 heads, fp32


def test_mqa_and_sliding_window_shrink_the_cache():
    base = dict(context=4096, dtype="bf16")
    gqa = summarize(load_preset("llama3_tiny"), **base)  # 2 KV heads of 16
    from train.model.config import apply_overrides

    mqa = summarize(apply_overrides(load_preset("llama3_tiny"), {"mixers.full.attention.num_kv_heads": 1}), **base)
    window = summarize(apply_overrides(load_preset("llama3_tiny"), {"mixers.full.attention.window": 128}), **base)
    assert gqa.kv_bytes_per_token_per_layer == [2 * 2 * 16 * 2] * 2
    assert mqa.kv_bytes_total * 2 == gqa.kv_bytes_total
    assert window.kv_bytes_total == 2 * 2 * 16 * 2 * 2 * 128
    assert window.attention_flops_per_token == 12 * 2 * 4 * 16 * 128


def test_cli_prints_table_and_rejects_misspelled_keys():
    run = [sys.executable, "-m", "train.inspect"]
    out = subprocess.run(run + ["compare=[gpt2,llama3]", "context=2048"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "124,439,808" in out and "8,030,261,248" in out and "PaLM" in out
    bad = subprocess.run(run + ["model=llama3_tiny", "model.mixers.full.attention.num_kv_head=1"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "num_kv_head" in bad.stderr
