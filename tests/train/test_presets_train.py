"""Every tiny preset pre-trains a few steps through the trainer (one process): the loss is finite and falls."""

import pytest

from tests.train_helpers import losses, metrics, run_training

pytestmark = pytest.mark.slow

PRESETS = ["gpt2_tiny", "llama3_tiny", "qwen3_tiny", "deepseek_v3_tiny", "qwen3_next_tiny", "mamba2_tiny",
           "falcon_h1_tiny", "qwen3_moe_tiny", "gpt_oss_tiny", "longcat_flash_tiny", "kimi_k2_tiny"]
MOE = {"deepseek_v3_tiny", "qwen3_next_tiny", "qwen3_moe_tiny", "gpt_oss_tiny", "longcat_flash_tiny", "kimi_k2_tiny"}


@pytest.mark.heavy
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_pretrains(prepared_data, tmp_path, preset):
    run_dir = tmp_path / preset
    run_training(run_dir, prepared_data, f"model={preset}", "trainer.max_steps=6", "optim.lr=3e-3",
                 "data.document_masking=true")
    logged = losses(run_dir)
    assert sorted(logged) == list(range(1, 7))
    assert logged[6] < logged[1]
    if preset in MOE:  # expert-load metrics and the auxiliary loss reach metrics.jsonl
        record = [r for r in metrics(run_dir) if r.get("step") == 6 and "loss" in r][0]
        assert "aux_loss" in record and any(k.endswith("/load_cv") for k in record)


def test_capacity_factor_from_the_command_line_drops_and_reports_it(prepared_data, tmp_path):
    run_dir = tmp_path / "capacity"
    result = run_training(run_dir, prepared_data, "model=qwen3_moe_tiny", "model.ffns.moe.moe.capacity_factor=0.5",
                          "trainer.max_steps=3")
    record = [r for r in metrics(run_dir) if r.get("step") == 3 and "loss" in r][0]
    dropped = [v for k, v in record.items() if k.endswith("/dropped_fraction")]
    assert len(dropped) == 2 and all(0.4 <= v < 1 for v in dropped)  # capacity: half of an even share per expert
    assert "| dropped 0." in result.stdout
