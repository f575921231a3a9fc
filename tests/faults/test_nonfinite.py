"""A NaN injected into the loss at a chosen step (FAULT=nan, one process), under trainer.nonfinite=skip and stop."""

import pytest

from tests.train_helpers import losses, run_training

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("policy", ["skip", pytest.param("stop", marks=pytest.mark.heavy)])
def test_non_finite_loss_between_reports_is_skipped_on_the_device(prepared_data, tmp_path, policy):
    """Step 3 is not a reporting step (every 5th is): its update is skipped on the device, the step counts,
    and step 5 reports it; under `stop` the run stops there."""
    run_dir = tmp_path / "run"
    result = run_training(run_dir, prepared_data, "trainer.max_steps=10", "trainer.log_every=5",
                          f"trainer.nonfinite={policy}", fault="nan:step=3", check=False)
    what = "1 non-finite step(s) since the last report, the latest at step 3, had their updates skipped"
    if policy == "skip":
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"warning: {what}; training goes on" in result.stdout
        assert losses(run_dir).keys() == {5, 10} and all(v == v for v in losses(run_dir).values())
    else:
        assert result.returncode != 0 and f"NonFiniteLoss: {what}; stopping (trainer.nonfinite=stop" in result.stderr
        assert not (run_dir / "metrics.jsonl").exists() or not losses(run_dir)


@pytest.mark.parametrize("policy", ["skip", pytest.param("stop", marks=pytest.mark.heavy)])
def test_non_finite_loss(prepared_data, tmp_path, policy):
    run_dir = tmp_path / "run"
    result = run_training(run_dir, prepared_data, "trainer.max_steps=6", f"trainer.nonfinite={policy}",
                          fault="nan:step=3", check=False)
    if policy == "skip":
        assert result.returncode == 0, result.stderr[-3000:]
        assert "warning: non-finite loss at step 3 (loss nan" in result.stdout and "the step is skipped" in result.stdout
        logged = losses(run_dir)
        assert sorted(logged) == list(range(1, 7)) and all(v == v for v in logged.values())  # no NaN logged
    else:
        assert result.returncode != 0
        assert "NonFiniteLoss: non-finite loss at step 3" in result.stderr
        assert "stopping (trainer.nonfinite=stop" in result.stderr
        assert max(losses(run_dir)) == 2
