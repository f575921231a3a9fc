#!/usr/bin/env bash
# Stop the cluster that up.sh started: cancel its jobs, stop the daemons whose PIDs up.sh recorded (and
# nothing else), remove its network namespaces and bridge. LLMB_SLURM_WIPE=1 also deletes its state and logs.
set -uo pipefail
LAB=${LLMB_SLURM_LAB:-/tmp/llm-blocks-slurm}
export SLURM_CONF=$LAB/etc/slurm.conf
say() { echo "[testcluster] $*"; }
alive() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null); [ -n "$state" ] && [ "${state:0:1}" != Z ]; }  # zombies count as stopped

if [ ! -s "$LAB/run/pids" ]; then
  say "nothing to stop: no $LAB/run/pids"
else
  if scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %i)
    if [ -n "$jobs" ]; then
      scancel $jobs
      for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  tac "$LAB/run/pids" | while read -r name pid; do  # slurmd n2, n1, slurmctld, munged
    alive "$pid" || { say "$name ($pid) was not running"; continue; }
    kill "$pid"
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then kill -9 "$pid"; say "killed $name ($pid)"; else say "stopped $name ($pid)"; fi
  done
  mv "$LAB/run/pids" "$LAB/run/pids.stopped"
fi
if [ "$(cat "$LAB/run/mode" 2>/dev/null)" = netns ]; then
  for i in 1 2; do ip netns del llb-n$i 2>/dev/null; ip link del llb-n${i}h 2>/dev/null; done
  ip link del llbbr0 2>/dev/null
  say "removed network namespaces llb-n1, llb-n2 and bridge llbbr0"
  rm -f "$LAB/run/mode"
fi
[ "${LLMB_SLURM_WIPE:-0}" = 1 ] && rm -rf "$LAB"/{state,spool,log} && say "wiped $LAB state and logs"
exit 0
