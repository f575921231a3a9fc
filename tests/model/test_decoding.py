"""KV-cache decoding equals the full forward pass, for every attention variant; sampling."""

import pytest
import torch

from train.model import build_model, generate
from train.model.generate import sample_next
from tests.model_helpers import assert_cached_decoding_equals_full

SLIDING = {"mixers.sliding": {"kind": "softmax_attention", "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "window": 4}},
           "layer_mixers": ["sliding", "full"], "num_layers": 4}
VARIANTS = {
    "mha": ("llama3_tiny", {"mixers.full.attention.num_kv_heads": 4}),
    "gqa": ("llama3_tiny", {}),
    "mqa": ("llama3_tiny", {"mixers.full.attention.num_kv_heads": 1}),
    "sliding_window": ("llama3_tiny", SLIDING),
    "sinks": ("llama3_tiny", {"mixers.full.attention.sinks": True}),
    "sliding_sinks": ("llama3_tiny", {**SLIDING, "mixers.sliding.attention.sinks": True}),
    "qk_norm": ("qwen3_tiny", {}),
    "gemma3_sandwich_local_global_softcaps": ("gemma3_tiny", {"mixers.local.attention.window": 4,
                                                              "mixers.global.attention.softcap": 2.0, "final_softcap": 3.0}),
    "olmo2_post_norm_whole_qk_norm": ("olmo2_tiny", {}),
    "partial_interleaved_rope": ("llama3_tiny", {"position.rotary_fraction": 0.5, "position.interleaved": True}),
    "yarn": ("llama3_tiny", {"position.kind": "yarn", "position.yarn.factor": 4.0, "position.yarn.original_context": 8}),
    "gpt2_learned": ("gpt2_tiny", {}),
    "sinusoidal": ("gpt2_tiny", {"position.kind": "sinusoidal"}),
}


def random_model(preset, overrides):
    torch.manual_seed(0)
    model = build_model(preset, init_std=0.1, **overrides).eval()
    for layer in model.layers:
        if layer.mixer.sinks is not None:
            torch.nn.init.normal_(layer.mixer.sinks, std=2.0)
    return model


@pytest.mark.parametrize("name", VARIANTS)
def test_incremental_logits_equal_full_forward(name):
    model = random_model(*VARIANTS[name])
    ids_BT = torch.randint(0, 8192, (2, 16))
    assert_cached_decoding_equals_full(model, ids_BT, prompt=10, tolerance=1e-5)  # longer than the window of 4


@pytest.mark.parametrize("name", ["gqa", "sliding_sinks"])
def test_greedy_generate_equals_argmax_without_cache(name):
    model = random_model(*VARIANTS[name])
    prompt_BT = torch.randint(0, 8192, (2, 6))
    out_BT = generate(model, prompt_BT, max_new_tokens=8)
    expected_BT = prompt_BT
    with torch.no_grad():
        for _ in range(8):  # naive decoding: rerun the whole sequence every step
            expected_BT = torch.cat([expected_BT, model(expected_BT)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out_BT, expected_BT)


def test_generate_stops_at_eos_and_pads_finished_rows():
    model = random_model("llama3_tiny", {})
    prompt_BT = torch.randint(0, 8192, (2, 4))
    greedy_BT = generate(model, prompt_BT, max_new_tokens=6)
    eos = int(greedy_BT[0, 5])  # the second token row 0 generates
    out_BT = generate(model, prompt_BT, max_new_tokens=6, eos_token_id=eos)
    assert out_BT[0, 5] == eos and (out_BT[0, 5:] == eos).all()
    assert out_BT.shape[1] <= 10


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 0.7, generator)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.7 needs the second token; the rest is cut
    draws = {int(sample_next(logits, 1.0, 1.0, generator)) for _ in range(300)}
    assert draws == {0, 1, 2, 3}
    assert int(sample_next(logits, 0.0, 1.0)) == 0


def test_sampling_is_reproducible_with_a_generator():
    model = random_model("llama3_tiny", {})
    prompt_BT = torch.randint(0, 8192, (1, 4))
    a = generate(model, prompt_BT, 5, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt_BT, 5, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (1, 9)
