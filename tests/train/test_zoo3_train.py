"""The zoo-III blocks train through the trainer: norms, activations and residual operators (one process, and
two ranks under FSDP), and multi-token prediction, whose loss is reported beside the next-token loss and
whose modules reach the checkpoint and the model folder."""

import pytest
from safetensors import safe_open

from tests.train_helpers import losses, metrics, run_training
from train.model import load_model

pytestmark = pytest.mark.slow

BLOCKS = {  # ~60 s each here under a load of 12 on 2 cores (~15 s on a quiet machine)
    "dyt_parallel_layerscale_relu2": ["model.norm.kind=dyt", "model.residual.arrangement=parallel",
                                      "model.residual.branch_scale=layerscale", "model.ffns.swiglu.activation=relu2",
                                      "model.layer_norm_placements=[post,sandwich]"],
    "mhc_value_residual": ["model.residual.hyper_connections.kind=manifold", "model.residual.value_residual=true",
                           "data.document_masking=true"],
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_new_blocks_pretrain(prepared_data, tmp_path, name):
    nproc = 2 if name == "mhc_value_residual" else 1
    run_training(tmp_path / name, prepared_data, *BLOCKS[name], "trainer.max_steps=6", "optim.lr=3e-3", nproc=nproc)
    logged = losses(tmp_path / name)
    assert sorted(logged) == list(range(1, 7)) and logged[6] < logged[1]


def test_mtp_trains_reports_and_is_kept(prepared_data, tmp_path):  # ~60 s here under load
    run_dir = tmp_path / "mtp"
    run_training(run_dir, prepared_data, "model=deepseek_v3_tiny", "model.mtp.depth=2", "trainer.max_steps=6",
                 "optim.lr=3e-3", "trainer.val_every=6", "checkpoint.every=6")
    records = metrics(run_dir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    assert train[-1]["mtp_loss"] < train[0]["mtp_loss"] and train[-1]["loss"] < train[0]["loss"]
    assert 0 < val[-1]["val_mtp_loss"] < 10 and "mtp_loss" not in [k for k in val[-1] if k != "val_mtp_loss"]
    assert any(name.endswith("layer3/load_cv") for name in train[-1])  # the MTP blocks' MoE counts on (layers 2, 3)
    model = load_model(run_dir / "model")
    assert model.config.mtp.depth == 2
    with safe_open(next((run_dir / "model").glob("*.safetensors")), "pt") as f:
        assert {"mtp.0.eh_proj.weight", "mtp.1.block.ffn.experts.w1_EFD"} <= set(f.keys())
    import torch.distributed.checkpoint as dcp

    checkpoint = next((run_dir / "checkpoints").glob("step_*6"))
    saved = dcp.FileSystemReader(checkpoint).read_metadata().state_dict_metadata
    mtp_keys = [key for key in saved if "mtp.1.eh_proj.weight" in key]  # the weight and its AdamW moments
    assert len(mtp_keys) >= 3 and any("exp_avg" in key for key in mtp_keys), mtp_keys
