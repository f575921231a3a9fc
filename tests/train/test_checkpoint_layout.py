"""The optimizer state's layout in a checkpoint: flat (by parameter name) since pipeline parallelism, and a
checkpoint written before it (groups by index, nested) still resumes, with every moment and hyperparameter."""

from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp

from train.checkpoint import CheckpointError, OptimizerState


def trained(lr: float):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model(torch.randn(3, 4)).square().sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("nested", [True, False])
def test_a_checkpoint_of_either_layout_loads_every_moment_and_hyperparameter(tmp_path, nested):
    one_process = SimpleNamespace(ep=1, pp=1)
    model, optimizer = trained(lr=0.01)
    written = OptimizerState(model, optimizer, one_process)
    written.nested = nested  # as the code before the flat layout wrote it
    dcp.save({"optim": written}, checkpoint_id=str(tmp_path))

    fresh_model, fresh_optimizer = trained(lr=0.5)
    fresh_model.load_state_dict(model.state_dict())
    for moments in fresh_optimizer.state.values():
        moments["exp_avg"].zero_()
    reader = OptimizerState(fresh_model, fresh_optimizer, one_process)
    reader.read_layout_of(tmp_path, "optim")
    assert reader.nested == nested
    dcp.load({"optim": reader}, checkpoint_id=str(tmp_path))
    assert not reader.nested  # the next save is flat
    expected, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert [g["lr"] for g in loaded["param_groups"]] == [0.01]
    for index, moments in expected["state"].items():
        for name, value in moments.items():
            torch.testing.assert_close(loaded["state"][index][name], value, rtol=0, atol=0)


def test_a_nested_checkpoint_is_refused_under_pipeline_parallelism(tmp_path):
    model, optimizer = trained(lr=0.01)
    written = OptimizerState(model, optimizer, SimpleNamespace(ep=1, pp=1))
    written.nested = True
    dcp.save({"optim": written}, checkpoint_id=str(tmp_path))
    with pytest.raises(CheckpointError, match="resume it once without parallel.pp"):
        OptimizerState(model, optimizer, SimpleNamespace(ep=1, pp=2)).read_layout_of(tmp_path, "optim")
