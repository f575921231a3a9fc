"""Every tiny preset pre-trains a few steps through the trainer (one process): the loss is finite and falls."""

import pytest

from train_helpers import losses, run_training

pytestmark = pytest.mark.slow

PRESETS = ["gpt2_tiny", "llama3_tiny", "qwen3_tiny", "deepseek_v3_tiny", "qwen3_next_tiny", "mamba2_tiny",
           "falcon_h1_tiny"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_pretrains(prepared_data, tmp_path, preset):
    run_dir = tmp_path / preset
    run_training(run_dir, prepared_data, f"model={preset}", "trainer.max_steps=6", "optim.lr=3e-3",
                 "data.document_masking=true")
    logged = losses(run_dir)
    assert sorted(logged) == list(range(1, 7))
    assert logged[6] < logged[1]
