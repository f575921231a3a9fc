"""A training step that does not report its figures never waits for the device: no Tensor.item, tolist,
__bool__, __int__, __float__, __index__, numpy or cpu call (each is a device->host copy on a GPU, counted
here on CPU where they are cheap but just as visible). A reporting step gives the same figures as a run
that reports every step."""

import threading
import traceback

import pytest
import torch

from train.config import TrainConfig
from train.trainer import Trainer

SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


class CountSyncs:
    """Patches the Tensor methods that copy to the host; counts calls from this thread with where they came from."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        self.originals = {name: getattr(torch.Tensor, name) for name in SYNCS}
        main = threading.current_thread()
        for name, original in self.originals.items():
            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                if threading.current_thread() is main:
                    self.calls.append((_name, traceback.extract_stack(limit=2)[0]))
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)


def trainer(prepared_data, tmp_path, model: str, log_every: int = 10, **model_overrides) -> Trainer:
    config = TrainConfig(run_name="syncs", out_dir=str(tmp_path))
    config.model = __import__("train.model", fromlist=["load_preset"]).load_preset(model)
    config.model.vocab_size = 512
    for key, value in model_overrides.items():
        setattr(config.model, key, value)
    config.data.path, config.data.seq_len = prepared_data, 64
    config.trainer.global_batch_size, config.trainer.micro_batch_size = 4, 2
    config.trainer.max_steps, config.trainer.log_every, config.trainer.val_every = 20, log_every, 0
    config.parallel.param_dtype, config.checkpoint.mode, config.checkpoint.every = "fp32", "sync", 0
    return Trainer(config)


def step(run: Trainer, report: bool):
    step = run.progress.step + 1
    batches = run.stream.next_step(run.plan.accumulation, step)  # the data stream is the host's own work
    with CountSyncs() as syncs:
        result = run.train_step(batches, report=report)
    run.progress.step = step
    return result, syncs.calls


@pytest.mark.parametrize("model, syncs_per_forward", [("llama3_tiny", 0), ("qwen3_moe_tiny", 0),
                                                      ("longcat_flash_tiny", 2)])
def test_a_step_that_does_not_report_makes_no_host_sync(prepared_data, tmp_path, model, syncs_per_forward):
    """LongCat's MoE layers have zero-computation experts: how many pairs reach the experts is known only on
    the device, one read per MoE layer and forward (train/model/moe/layer.py): 2 layers, 2 micro-batches."""
    run = trainer(prepared_data, tmp_path, model)
    try:
        step(run, report=False)  # warm-up: lazily built state (optimizer moments, caches)
        result, calls = step(run, report=False)
        assert result.taken and result.figures is None and result.tokens == 4 * 64
        assert len(calls) == syncs_per_forward * run.plan.accumulation, calls
        assert all(name == "__int__" and "moe/layer.py" in frame.filename for name, frame in calls), calls
        result, calls = step(run, report=True)
        assert calls and set(result.figures) >= {"loss", "grad_norm", "lr"}
    finally:
        run.close()
        torch.distributed.destroy_process_group()


def test_reporting_every_step_or_every_third_gives_the_same_figures(prepared_data, tmp_path):
    figures, weights = {}, {}
    for every in (1, 3):
        run = trainer(prepared_data, tmp_path / str(every), "qwen3_moe_tiny", log_every=every)
        try:
            for _ in range(6):
                result, _ = step(run, report=run.reports(run.progress.step + 1))
                if result.figures is not None:
                    figures.setdefault(every, {})[run.progress.step] = result.figures
            weights[every] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        finally:
            run.close()
            torch.distributed.destroy_process_group()
    assert sorted(figures[3]) == [3, 6]
    for s in (3, 6):
        assert figures[3][s] == pytest.approx(figures[1][s], rel=1e-6), s
    for name in weights[1]:
        torch.testing.assert_close(weights[3][name], weights[1][name], rtol=0, atol=0, msg=name)
