"""`python -m data [overrides]`: prepare token shards (see data/prepare.py and configs/data.yaml)."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from common.paths import CONFIGS_DIR
from data.config import PrepareConfig
from data.errors import DataError
from data.prepare import prepare

def summary(prepared) -> str:
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
    skipped = sum(s["skipped_lines"] for s in m["sources"])
    if skipped:
        lines.append(f"  skipped    {skipped} malformed line(s) (source.skip_bad_lines=true)")
    lines.append(f"  manifest   {path / 'manifest.json'}")
    return "\n".join(lines)


@hydra.main(config_path=str(CONFIGS_DIR), config_name="data", version_base=None)
def main(cfg: DictConfig) -> None:
    config: PrepareConfig = OmegaConf.to_object(cfg)
    try:
        prepared = prepare(config)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(summary(prepared))


if __name__ == "__main__":
    main()
