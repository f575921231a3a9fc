"""Score a model with lm-evaluation-harness (EleutherAI's lm-eval, github.com/EleutherAI/lm-evaluation-harness)
through its Hugging Face export.

    python -m train.evaluate model_dir=<folder> tasks=[hellaswag,arc_easy] [task_files=[...]] [limit=100]
        [num_fewshot=0] [batch_size=8] [device=auto] [dtype=fp32|bf16] [out=<results.json>]

`model_dir` is a stage's model folder or a run's `checkpoints/step_N` (exported first, train/export.py, to a
Hugging Face folder under $TMPDIR, removed at the end) or a Hugging Face folder (read as it is). `tasks`
are lm-eval's named tasks (their data sets come from the Hugging Face Hub, or its cache offline);
`task_files` are local: lm-eval task YAML files, folders of them, or multiple-choice .jsonl files in
train/downstream.py's format (an lm-eval multiple_choice task named after the file, scored as the
training callback scores it). Prints one line per task and metric, and writes lm-eval's results (without
per-sample records) to `out`, by default <model_dir>/eval_results.json. Needs lm-eval:
pip install -e ".[eval]".
"""

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from common.atomic import atomic_write
from common.errors import BAD_INPUT, one_line_errors
from common.paths import CONFIGS_DIR
from train.config import ModelFolderArgs
from train.downstream import DELIMITER, read_questions
from train.export import export
from train.model.folder import is_model_folder
from train.model.hf import EXPORT_DTYPES, TOKENIZER_FILES

MISSING = 'lm-eval is not installed: pip install -e ".[eval]" (or pip install "lm-eval>=0.4.13,<0.5")'


@dataclass
class EvaluateConfig(ModelFolderArgs):
    tasks: List[str] = field(default_factory=list)  # lm-eval task or group names, e.g. [hellaswag,arc_easy]
    task_files: List[str] = field(default_factory=list)  # local: lm-eval task YAMLs, folders of them, multiple-choice .jsonl
    limit: Optional[float] = None  # examples per task (below 1: a fraction of them); None: all
    num_fewshot: Optional[int] = None  # None: each task's own default
    batch_size: int = 8
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    dtype: str = "fp32"  # of the exported weights and the forward passes: fp32 | bf16
    out: Optional[str] = None  # the results JSON; None: <model_dir>/eval_results.json


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def jsonl_task(path: Path) -> Dict[str, Any]:
    """An lm-eval multiple_choice task reading a train/downstream.py JSONL file (checked here first)."""
    read_questions(path)
    return {
        "task": path.stem, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path.resolve())}},
        "test_split": "test", "output_type": "multiple_choice", "target_delimiter": DELIMITER,
        "doc_to_text": lambda doc: doc["query"] if doc.get("query") is not None else doc["context"],
        "doc_to_choice": "choices", "doc_to_target": "answer",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
    }


def local_tasks(paths: List[str]) -> List[Dict[str, Any]]:
    """lm-eval task configs of task_files: a YAML file, each *.yaml of a folder, or a .jsonl file."""
    configs = []
    for name in paths:
        path = Path(name)
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"task_files: {name}: no such file, or a folder without *.yaml files")
        for file in files:
            if file.suffix == ".jsonl":
                configs.append(jsonl_task(file))
            elif file.suffix in (".yaml", ".yml"):
                from lm_eval.tasks._yaml_loader import load_yaml  # what lm-eval's own CLI reads task files with

                configs.append(load_yaml(file, resolve_func=True))
            else:
                raise ValueError(f"task_files: {file}: give an lm-eval task .yaml, a folder of them, "
                                 "or a multiple-choice .jsonl")
    return configs


def hf_folder(model_dir: Path, dtype: str, scratch: Path) -> Path:
    """model_dir itself when it is a Hugging Face folder, else its export into `scratch`."""
    if (model_dir / "config.json").is_file() and not is_model_folder(model_dir):
        return model_dir
    folder = export(model_dir, scratch / "hf", dtype=dtype)
    lacking = [name for name in TOKENIZER_FILES[:2] if not (folder / name).is_file()]
    if lacking:  # lm-eval reads the end-of-text token from tokenizer_config.json
        raise FileNotFoundError(f"{model_dir}: no {' or '.join(lacking)} found for it (beside the model, or in the "
                                "run's model/ folder for a step checkpoint); lm-eval needs both tokenizer files")
    return folder


def evaluate(config: EvaluateConfig) -> Dict[str, Any]:
    """lm-eval's results for config.model_dir on config.tasks and config.task_files (no per-sample records)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ModuleNotFoundError(MISSING) from None
    if config.dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={config.dtype!r}; use one of {', '.join(EXPORT_DTYPES)}")
    model_dir = Path(config.model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such folder; give a model folder or a run's checkpoints/step_N")
    tasks = list(config.tasks) + local_tasks(config.task_files)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:
        model = HFLM(pretrained=str(hf_folder(model_dir, config.dtype, Path(scratch))), device=device,
                     dtype=EXPORT_DTYPES[config.dtype][0], batch_size=config.batch_size)
        # the index of lm-eval's own tasks takes a while to build: only when named tasks need it
        manager = TaskManager(include_defaults=bool(config.tasks))
        results = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, limit=config.limit,
                                          num_fewshot=config.num_fewshot, log_samples=False)
    return {"model_dir": str(model_dir), **results}


def table(results: Dict[str, Any]) -> str:
    """One line per task and metric: task, metric (with its filter unless `none`), value, stderr, examples."""
    lines = [f"{'task':<24} {'metric':<16} {'value':>8} {'stderr':>8} {'n':>6}"]
    for task, metrics in results["results"].items():
        n = results.get("n-samples", {}).get(task, {}).get("effective", "")
        for key, value in metrics.items():
            metric, _, kind = key.partition(",")
            if not kind or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{kind}")
            label = metric if kind == "none" else f"{metric} ({kind})"
            stderr = f"{stderr:8.4f}" if isinstance(stderr, (int, float)) else f"{'-':>8}"
            lines.append(f"{task:<24} {label:<16} {value:8.4f} {stderr} {n:>6}")
    return "\n".join(lines)


def write_results(results: Dict[str, Any], out: Path) -> Path:
    from lm_eval.utils import handle_non_serializable

    return atomic_write(out, json.dumps(results, indent=2, default=handle_non_serializable) + "\n")


@hydra.main(config_path=str(CONFIGS_DIR), config_name="evaluate", version_base=None)
def main(cfg) -> None:
    config: EvaluateConfig = OmegaConf.to_object(cfg)
    if not config.model_dir or not (config.tasks or config.task_files):
        sys.exit("error: give model_dir=<model folder or step checkpoint> and tasks=[...] and/or task_files=[...]")
    with one_line_errors(*BAD_INPUT, ModuleNotFoundError):
        results = evaluate(config)
    print(table(results))
    out = write_results(results, Path(config.out or Path(config.model_dir) / "eval_results.json"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
