"""Inspector cache numbers for MLA and linear mixers, worked out by hand from the published sizes."""

import subprocess
import sys

from train.model import load_preset
from train.model.summary import summarize
from common.paths import REPO



def test_deepseek_v3_mla_caches_latent_and_rope_key_only():
    L, H, C, R, N, V, T = 61, 128, 512, 64, 128, 128, 4096
    s = summarize(load_preset("deepseek_v3"), context=T, dtype="bf16")
    assert s.kv_bytes_per_token_per_layer == [(C + R) * 2] * L == [1152] * L
    assert s.state_bytes_per_layer == [0] * L
    assert s.kv_bytes_total == 1152 * L * T
    assert s.mha_kv_bytes_per_token == H * (N + R + V) * 2 * L == 81920 * L  # 71x more
    assert s.attention_flops_per_token == 6 * H * (N + R + V) * T * L


def test_mamba2_state_is_constant_in_the_context():
    L, H, P, N, G, K = 64, 80, 64, 128, 1, 4
    conv = (H * P + 2 * G * N) * (K - 1) * 2  # bf16 conv state: 5376 channels x 3 taps
    ssm = H * P * N * 2
    assert conv + ssm == 32256 + 1310720
    for T in (1024, 65536):
        s = summarize(load_preset("mamba2"), context=T, dtype="bf16")
        assert s.kv_bytes_per_token_per_layer == [0] * L
        assert s.state_bytes_per_layer == [conv + ssm] * L
        assert s.kv_bytes_total == L * (conv + ssm) == 85_950_464
        assert s.attention_flops_per_token == 12 * H * P * N * L


def test_qwen3_next_hybrid_adds_a_growing_and_a_fixed_part():
    Hk, Hv, Kd, Vd, conv_k = 16, 32, 128, 128, 4
    gdn_state = (2 * Hk * Kd + Hv * Vd) * (conv_k - 1) * 4 + Hv * Kd * Vd * 4  # fp32
    attention_per_token = 2 * 2 * 256 * 4  # K and V of 2 KV heads of 256, fp32
    T = 32768
    s = summarize(load_preset("qwen3_next"), context=T, dtype="fp32")
    assert s.state_bytes_per_layer == [gdn_state, gdn_state, gdn_state, 0] * 12
    assert s.kv_bytes_per_token_per_layer == [0, 0, 0, attention_per_token] * 12
    assert s.kv_bytes_total == 36 * gdn_state + 12 * attention_per_token * T == 36 * 2_195_456 + 12 * 4096 * T


def test_falcon_h1_parallel_layers_have_both():
    s = summarize(load_preset("falcon_h1"), context=1000, dtype="bf16")
    attention, ssm = 2 * 2 * 128 * 2, (24 * 256 + 2 * 256) * 3 * 2 + 24 * 256 * 256 * 2
    assert s.kv_bytes_per_token_per_layer == [attention] * 44 and s.state_bytes_per_layer == [ssm] * 44
    assert s.kv_bytes_total == 44 * (attention * 1000 + ssm)


def test_cli_compares_mla_and_linear_presets():
    run = [sys.executable, "-m", "train.inspect", "compare=[llama3,deepseek_v3,mamba2]", "context=8192"]
    out = subprocess.run(run, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "1.12 KiB" in out  # MLA: 1152 bytes/token/layer
    assert "4.77 MiB" in out  # MHA at equal heads: 61 * 81920 bytes/token
    assert "81.97 MiB" in out  # Mamba2 state, the same at any context
    assert "fixed state bytes" in out
