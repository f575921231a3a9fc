"""Elastic multi-process training on this machine, in one line:

    python -m launch.local --nproc 4 stage=pretrain model=llama3_tiny trainer.max_steps=1000

runs `torchrun` with a c10d rendezvous, `--max-restarts` (a rank that dies restarts all workers,
which resume from the latest complete checkpoint) and a short `last_call_timeout` (otherwise each
rendezvous waits ~30 s). Every argument that isn't an option here is a Hydra override for the module.

    python -m launch.local --nproc 2 stage=pretrain data.path=outputs/data/stdlib
    python -m launch.local --nproc 2 stage=sft init.weights=outputs/runs/midtrain/model
"""

import argparse
import os
import subprocess
import sys

from common.processes import free_port, threads_per_process


def torchrun_command(nproc: int, max_restarts: int, module: str, overrides, script=None):
    target = [script] if script else ["-m", module]
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--max-restarts", str(max_restarts),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        "--rdzv-conf", "last_call_timeout=1",
        *target, *overrides,
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="The overrides' groups (model=, stage=) and options: python -m train --help")
    parser.add_argument("--nproc", type=int, default=2, help="processes (ranks) on this machine")
    parser.add_argument("--max-restarts", type=int, default=3, help="elastic restarts before giving up")
    parser.add_argument("--module", default="train", help="the Python module to run (default: train)")
    args, overrides = parser.parse_known_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS=threads_per_process(args.nproc))
    return subprocess.call(torchrun_command(args.nproc, args.max_restarts, args.module, overrides), env=env)


if __name__ == "__main__":
    sys.exit(main())
