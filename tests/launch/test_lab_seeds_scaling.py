"""Seeds and scaling in the lab without training: the planned runs (names, seeds, rungs, FLOP matching), the
new named sweeps composing, and the report's statistics from fake run folders, recomputed here with
numpy and a t table."""

import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from launch.report import write_report
from launch.sweep import parse_args, plan
from launch.sweep_config import load_sweep
from tests.sweep_helpers import markdown_rows


def planned(tmp_path, *argv):
    args, items = parse_args([*argv, "--out", str(tmp_path)])
    return plan(args, items, "python -m launch.sweep " + " ".join(argv))


@pytest.mark.parametrize("name", ["norm", "activation", "residual", "mtp"])
def test_new_named_sweeps_compose_with_three_seeds(name, tmp_path):
    state = planned(tmp_path, f"sweep={name}")
    points = [p.name for p in load_sweep(name).points]
    assert state.seeds == 3 and [r.name for r in state.points] == [f"{p}-seed{s}" for p in points for s in range(3)]
    assert all(r.status == "pending" for r in state.points), [r.reason for r in state.points if r.reason]


def test_seeds_set_trainer_seed_and_keep_the_driver_keys_last(tmp_path):
    state = planned(tmp_path, "sweep=residual", "--points=sequential,mhc", "--seeds=2", "trainer.seed=7")
    run = state.points[3]
    assert (run.name, run.point, run.seed, run.group) == ("mhc-seed8", "mhc", 8, "mhc")
    assert run.overrides[-4:] == ["trainer.seed=8", f"out_dir={tmp_path}", "run_name=mhc-seed8", "logging.wandb.group=residual"]
    assert run.config["trainer"]["seed"] == 8 and state.budget.endswith("seeds 7..8")


def test_scaling_runs_every_point_at_every_rung_matched_by_flops(tmp_path):
    state = planned(tmp_path, "sweep=activation", "--points=swiglu,mlp_gelu", "--scaling", "--seeds=1")
    assert state.match == "flops" and state.rungs == ["d32", "d64", "d96", "d128"]
    assert [r.name for r in state.points][:4] == ["swiglu.d32", "mlp_gelu.d32", "swiglu.d64", "mlp_gelu.d64"]
    from launch.report import architecture

    for rung in range(4):
        reference, matched = state.points[2 * rung], state.points[2 * rung + 1]
        assert matched.adjustment["key"] == "model.ffns.mlp.hidden_dim" and abs(matched.adjustment["error"]) < 0.05
        flops = [architecture(r.config)["train_flops_per_token"] for r in (reference, matched)]
        assert abs(flops[1] / flops[0] - 1) < 0.05
    widths = [architecture(r.config)["total_params"] for r in state.points[::2]]
    assert widths == sorted(widths) and widths[0] < widths[-1] / 3


def fake_run(run_dir, config, val_loss, tokens_per_s=1000.0):
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    records = [{"step": 10, "loss": val_loss + 0.5, "tokens_per_s": tokens_per_s, "memory_gb": 0.5},
               {"step": 10, "val_loss": val_loss + 0.3}, {"step": 20, "loss": val_loss + 0.2, "tokens_per_s": tokens_per_s,
                                                         "memory_gb": 0.6}, {"step": 20, "val_loss": val_loss}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "model").mkdir()
    (run_dir / "model" / "model.safetensors").write_bytes(b"")


T975 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student's t 0.975 quantiles (tables), by degrees of freedom


def test_seeded_report_statistics(tmp_path):
    state = planned(tmp_path, "sweep=norm", "--points=pre_rms,post,dyt", "--seeds=3")
    losses = {"pre_rms": [5.00, 5.02, 4.98], "post": [5.01, 4.97, 5.03], "dyt": [5.40, 5.43, 5.38]}
    for run in state.points:
        fake_run(tmp_path / run.name, run.config, losses[run.point][run.seed])
    state.save()
    write_report(tmp_path)
    rows = {r["point"]: r for r in json.loads((tmp_path / "report.json").read_text())["rows"]}
    for point, values in losses.items():
        row, sd = rows[point], np.std(values, ddof=1)
        assert row["final_val_loss"] == pytest.approx(np.mean(values)) and row["val_loss_sd"] == pytest.approx(sd)
        half = T975[2] * sd / math.sqrt(3)
        assert row["val_loss_ci95"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
        assert row["val_curve"] == [[10 * 16 * 256, pytest.approx(np.mean(values) + 0.3)],
                                    [20 * 16 * 256, pytest.approx(np.mean(values))]]
    assert rows["pre_rms"]["verdict"] == "reference" and rows["post"]["verdict"] == "indistinguishable"
    assert rows["dyt"]["verdict"] == "worse" and rows["dyt"]["welch_p"] < 1e-3
    table = markdown_rows((tmp_path / "report.md").read_text())
    assert table["dyt"][11:] == ["3/3", f"{np.mean(losses['dyt']):.4f} ± {np.std(losses['dyt'], ddof=1):.4f}",
                                 f"[{rows['dyt']['val_loss_ci95'][0]:.4f}, {rows['dyt']['val_loss_ci95'][1]:.4f}]",
                                 f"worse (p={rows['dyt']['welch_p']:.3f})"]


def test_scaling_report_fits_a_power_law(tmp_path):
    state = planned(tmp_path, "sweep=norm", "--points=pre_rms,dyt", "--scaling", "--seeds=1")
    truth = {"pre_rms": (30.0, 0.08), "dyt": (40.0, 0.09)}  # loss = a C^-b
    from launch.report import architecture

    for run in state.points:
        compute = architecture(run.config)["train_flops_per_token"] * 40 * 16 * 256  # the YAML budget: 40 steps
        run.config["trainer"]["max_steps"] = 40
        a, b = truth[run.point]
        fake_run(tmp_path / run.name, run.config, a * compute ** -b)
    state.save()
    write_report(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    for fit in report["scaling"]:
        slope, intercept = np.polyfit(np.log(fit["compute"]), np.log(fit["val_loss"]), 1)
        assert fit["b"] == pytest.approx(-slope) == pytest.approx(truth[fit["point"]][1])
        assert fit["a"] == pytest.approx(math.exp(intercept), rel=1e-6) and fit["r2"] == pytest.approx(1.0)
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Loss against compute" in (tmp_path / "report.md").read_text()
