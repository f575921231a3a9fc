"""`python -m data [overrides]`: prepare token shards (see data/prepare.py and configs/data.yaml)."""

import hydra
from omegaconf import DictConfig, OmegaConf

from common.errors import BAD_INPUT, one_line_errors
from common.help import install_help
from common.paths import CONFIGS_DIR
from data.config import PrepareConfig
from data.errors import DataError
from data.prepare import prepare
from data.split import documents_needed

install_help(
    "python -m data: prepare token shards (documents -> tokenizer -> packed train/val shards + manifest).",
    "python -m data [source=NAME] [KEY=VALUE ...]   (the output folder: out_dir/name)",
    ["python -m data                                        # the embedded default: Python's docs and stdlib",
     "python -m data source=local source.paths=[book.txt] name=book   # one plain-text file just works",
     "python -m data source=hf source.name=HuggingFaceFW/fineweb-edu source.config_name=sample-10BT "
     "source.streaming=true source.max_documents=100000 name=fineweb"],
    ["source"], PrepareConfig)


def summary(prepared, val_fraction: float) -> str:
    m, path = prepared.manifest, prepared.path.resolve()
    lines = [
        f"{'already prepared, nothing to do' if prepared.reused else 'prepared'}: {path} (fingerprint {m['fingerprint']})",
        f"  tokenizer  {path / m['tokenizer']['file']} (vocab {m['tokenizer']['vocab_size']}, "
        f"{'trained' if m['tokenizer']['trained'] else 'loaded'})",
    ]
    for split, info in m["splits"].items():
        lines.append(
            f"  {split:<10} {info['tokens']:,} tokens in {info['documents']:,} documents, "
            f"{len(info['shards'])} shard(s) of {m['dtype']} in {path / split}"
        )
    if m.get("held_out") == "tail":
        documents = sum(s["documents"] for s in m["sources"])
        lines.append(f"  held out   the text's last {100 * val_fraction:g}% for validation: {documents} document(s), fewer "
                     f"than the {documents_needed(val_fraction)} that shards.val_fraction={val_fraction:g} needs to hold "
                     "out whole ones (or split .txt files: source.txt_unit=paragraph)")
    skipped = sum(s["skipped_lines"] for s in m["sources"])
    if skipped:
        lines.append(f"  skipped    {skipped} malformed line(s) (source.skip_bad_lines=true)")
    lines.append(f"  manifest   {path / 'manifest.json'}")
    return "\n".join(lines)


@hydra.main(config_path=str(CONFIGS_DIR), config_name="data", version_base=None)
def main(cfg: DictConfig) -> None:
    config: PrepareConfig = OmegaConf.to_object(cfg)
    with one_line_errors(DataError, *BAD_INPUT):
        prepared = prepare(config)
    print(summary(prepared, config.shards.val_fraction))


if __name__ == "__main__":
    main()
