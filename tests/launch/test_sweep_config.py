"""Named sweeps and command-line axes: every named point composes and builds, typos and unfair points are
errors naming the file and key, comma lists expand to points, and --match adjusts sizes within tolerance."""

from dataclasses import asdict

import pytest

from launch.match import match_knob, measure
from launch.report import architecture
from launch.sweep import parse_args, plan
from launch.sweep_config import available_sweeps, load_sweep
from train.model.config import load_preset, to_model_config
from train.model.summary import summarize


def planned(*argv):
    """The planned sweep state as sweep.json holds it (one seed a point unless argv says otherwise)."""
    args, items = parse_args(["--seeds=1", *argv])
    return asdict(plan(args, items, "test"))


@pytest.mark.parametrize("name", ["attention", "position", "ffn", "experts", "depth_width", "heads"])
def test_every_named_point_composes_and_builds(name, tmp_path):
    state = planned(f"sweep={name}", "--out", str(tmp_path))
    assert [p["name"] for p in state["points"]] == [p.name for p in load_sweep(name).points]
    for point in state["points"]:
        assert point["status"] == "pending", point["reason"]
        assert architecture(point["config"])["total_params"] > 0
        driver = [f"out_dir={tmp_path}", f"run_name={point['name']}", f"logging.wandb.group={name}"]
        assert point["overrides"][-3:] == driver
    assert name in available_sweeps()


def test_attention_points_change_only_the_mixer(tmp_path):
    points = planned("sweep=attention", "--out", str(tmp_path))["points"]
    models = {p["name"]: to_model_config(p["config"]["model"]) for p in points}
    kinds = {name: {model.layer_mixer(i).kind for i in range(model.num_layers)} for name, model in models.items()}
    assert kinds == {"mha": {"softmax_attention"}, "gqa": {"softmax_attention"}, "mqa": {"softmax_attention"},
                     "mla": {"mla"}, "sliding": {"softmax_attention"}, "gated_deltanet": {"gated_deltanet"},
                     "mamba2": {"mamba2"}, "hybrid": {"gated_deltanet", "softmax_attention"}}
    assert [models[n].layer_mixer(0).attention.num_kv_heads for n in ("mha", "gqa", "mqa")] == [4, 2, 1]
    assert {(m.dim, m.num_layers, m.layer_ffn(0).hidden_dim) for m in models.values()} == {(64, 2, 176)}


def test_experts_points_have_equal_active_parameters(tmp_path):
    points = planned("sweep=experts", "--out", str(tmp_path))["points"]
    active = {p["name"]: architecture(p["config"])["active_params"] for p in points}
    reference = active["e8_top2"]
    assert all(abs(a / reference - 1) < 0.01 for a in active.values()), active


@pytest.mark.parametrize("match", ["params", "flops"])
def test_match_adjusts_each_point_to_the_first(match, tmp_path):
    state = planned("sweep=attention", f"--match={match}", "--out", str(tmp_path))
    reference, *others = state["points"]
    target = measure(summarize(to_model_config(reference["config"]["model"]), 256), match)
    assert reference["adjustment"] is None and state["reference"] == "mha"
    for point in others:
        adjustment = point["adjustment"]
        model = to_model_config(point["config"]["model"])
        assert point["status"] == "pending" and model.layer_ffn(0).hidden_dim == adjustment["after"]
        assert adjustment["key"] == "model.ffns.swiglu.hidden_dim" and adjustment["before"] == 176
        assert f"model.ffns.swiglu.hidden_dim={adjustment['after']}" in point["overrides"]
        assert adjustment["value"] == measure(summarize(model, 256), match) and adjustment["target"] == target
        assert abs(adjustment["value"] / target - 1) <= 0.05


def test_depth_width_matches_non_embedding_parameters(tmp_path):
    state = planned("sweep=depth_width", "--out", str(tmp_path))
    assert state["match"] == "nonembedding"
    sizes = [measure(summarize(to_model_config(p["config"]["model"])), "nonembedding") for p in state["points"]]
    assert all(abs(size / sizes[0] - 1) <= 0.05 for size in sizes), sizes
    assert [to_model_config(p["config"]["model"]).num_layers for p in state["points"]] == [8, 16, 4, 2, 1]


def test_match_knob_errors_name_the_knob():
    model = load_preset("llama3_tiny")
    with pytest.raises(ValueError, match="knob model.ffns.mlp.hidden_dim is None"):
        match_knob(model, "model.ffns.mlp.hidden_dim", "params", 10**6, 256)
    with pytest.raises(ValueError, match="does not change this point's params"):
        match_knob(model, "model.max_seq_len", "params", 10**6, 256)  # RoPE: no position table to grow
    adjustment = match_knob(model, "model.ffns.swiglu.hidden_dim", "params", 2 * summarize(model).params_total, 256)
    assert abs(adjustment.error) < 0.01 and adjustment.after % 8 == 0 and adjustment.after > 176


def test_axes_expand_named_points(tmp_path):
    state = planned("sweep=attention", "--points=mha,mla", "optim.lr=1e-3,3e-3", "trainer.max_steps=7",
                    "--out", str(tmp_path))
    names = [p["name"] for p in state["points"]]
    assert names == ["mha_lr-0.001", "mha_lr-0.003", "mla_lr-0.001", "mla_lr-0.003"]  # Hydra's value strings
    assert [p["config"]["optim"]["lr"] for p in state["points"]] == [1e-3, 3e-3, 1e-3, 3e-3]
    assert all(p["config"]["trainer"]["max_steps"] == 7 for p in state["points"])
    assert state["budget"].startswith("7 steps x 16 sequences x 256 tokens = 28,672 tokens per point")


def test_axes_alone_make_a_sweep_named_after_them(tmp_path):
    state = planned("model.mixers.full.attention.num_kv_heads=1,2,x", "--out", str(tmp_path))
    assert state["name"] == "num_kv_heads"
    assert [p["name"] for p in state["points"]] == ["num_kv_heads-1", "num_kv_heads-2", "num_kv_heads-x"]
    assert [p["status"] for p in state["points"]] == ["pending", "pending", "failed"]
    assert "invalid overrides" in state["points"][2]["reason"] and "num_kv_heads" in state["points"][2]["reason"]


@pytest.mark.parametrize("argv, message", [
    (["sweep=nope"], "sweep=nope: there is no .*nope.yaml; available: activation, attention"),
    (["sweep=attention", "--points=mha,bogus"], "--points bogus: not in the sweep"),
    (["sweep=attention", "run_name=x"], "the sweep sets run_name"),
    (["sweep=attention", "trainer.max_steps=10,20"], "sets trainer.max_steps: every point trains on the same data"),
    (["data.path=a,b"], "sets data.path"),
])
def test_command_line_errors(argv, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        planned(*argv, "--out", str(tmp_path))


@pytest.mark.parametrize("name, text, message", [
    ("typo", "points:\n  - {name: a, overides: [model.dim=32]}\n",
     r"typo.yaml: points\[0\]: Key 'overides' not in 'PointConfig' \(the keys of"),
    ("unfair", "points:\n  - {name: a, overrides: [trainer.seed=1]}\n", r"unfair.yaml: point 'a' sets trainer.seed"),
    ("top", "matchh: params\npoints: []\n", r"top.yaml: Key 'matchh' not in 'SweepConfig'"),
    ("twice", "points:\n  - {name: a}\n  - {name: a}\n", r"twice.yaml: point names must be unique; repeated: \['a'\]"),
    ("badname", "points:\n  - {name: 'a b'}\n", r"badname.yaml: point 'a b': the name must be letters"),
])
def test_sweep_file_typos_name_the_file_and_key(name, text, message, tmp_path, monkeypatch):
    monkeypatch.setattr("launch.sweep_config.SWEEPS_DIR", tmp_path)
    (tmp_path / f"{name}.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_sweep(name)
