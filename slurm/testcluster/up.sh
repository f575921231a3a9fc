#!/usr/bin/env bash
# Bring up a real two-node SLURM cluster on this one Linux machine, for the project's tests and for trying
# `python -m launch.slurm ... cluster=local_test` by hand (root needed; idempotent).
#
#   slurm/testcluster/up.sh            # then: source $LLMB_SLURM_LAB/env.sh; sinfo
#   slurm/testcluster/down.sh          # stops exactly what up.sh started
#
# Debian's slurmctld (the controller) and two slurmd (nodes n1 and n2), authenticated with munge. By
# default each slurmd lives in its own network namespace with its own hostname and address (n1 =
# 10.201.0.1, n2 = 10.201.0.2, the controller on a bridge at 10.201.0.254), so a multi-node job really
# rendezvous over the network. Where namespaces can't be made, LLMB_SLURM_MODE=ports (also the
# fallback) runs both slurmd on 127.0.0.1 with two ports. Everything lives under $LLMB_SLURM_LAB; names
# and ports differ from ../shared/slurm-lab's so both can run at once.
# Exit status 3: this machine can't run the cluster (not root, no apt and no packages); the tests skip.
set -euo pipefail
LAB=${LLMB_SLURM_LAB:-/tmp/llm-blocks-slurm}
MODE=${LLMB_SLURM_MODE:-netns}
NET=10.201.0
export SLURM_CONF=$LAB/etc/slurm.conf
say() { echo "[testcluster] $*"; }
cannot() { say "cannot start: $*"; exit 3; }
# A process that exited but wasn't reaped (a zombie: where PID 1 doesn't reap, as in some containers) isn't running.
alive() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null); [ -n "$state" ] && [ "${state:0:1}" != Z ]; }
running() { [ -s "$1" ] && alive "$(cat "$1")"; }

[ "$(id -u)" = 0 ] || cannot "needs root (slurmd runs jobs as any user; munge keys are root's)"

# Packages: installed once (they stay; down.sh stops daemons only).
PKGS="slurmctld slurmd slurm-client munge"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  command -v apt-get >/dev/null || cannot "packages $PKGS missing and no apt-get"
  mkdir -p "$LAB"
  say "installing $PKGS"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PKGS >"$LAB/apt.log" 2>&1 \
    || { tail -5 "$LAB/apt.log"; cannot "apt-get install failed (log: $LAB/apt.log)"; }
fi

mkdir -p "$LAB"/{etc,state,spool,log,run,munge}
chmod 700 "$LAB/munge"; chmod 755 "$LAB" "$LAB/run"
[ -s "$LAB/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$LAB/munge/munge.key"; chmod 400 "$LAB/munge/munge.key"; }

if [ -s "$LAB/run/pids" ] && running "$LAB/run/slurmctld.pid"; then
  MODE=$(cat "$LAB/run/mode")
else
  rm -f "$LAB/run/pids"
fi

# Network namespaces, one per node, on a bridge (falls back to ports mode where they can't be made).
if [ "$MODE" = netns ]; then
  if ! { ip link show llbbr0 >/dev/null 2>&1 || { ip link add llbbr0 type bridge && ip addr add $NET.254/24 dev llbbr0; }; } 2>"$LAB/log/netns.err"; then
    say "network namespaces unavailable ($(head -1 "$LAB/log/netns.err")); using ports mode"
    MODE=ports
  fi
fi
if [ "$MODE" = netns ]; then
  ip link set llbbr0 up
  for i in 1 2; do
    [ -e /run/netns/llb-n$i ] || ip netns add llb-n$i
    if ! ip -n llb-n$i link show eth0 >/dev/null 2>&1; then
      ip link add llb-n${i}h type veth peer name llb-n${i}c
      ip link set llb-n${i}c netns llb-n$i
      ip -n llb-n$i link set llb-n${i}c name eth0
      ip -n llb-n$i addr add $NET.$i/24 dev eth0
    fi
    ip link set llb-n${i}h master llbbr0 up
    ip -n llb-n$i link set lo up
    ip -n llb-n$i link set eth0 up
  done
  CONTROLLER=$NET.254
  NODE1="NodeName=n1 NodeHostname=n1 NodeAddr=$NET.1"
  NODE2="NodeName=n2 NodeHostname=n2 NodeAddr=$NET.2"
else
  CONTROLLER=127.0.0.1
  NODE1="NodeName=n1 NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=16921"
  NODE2="NodeName=n2 NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=16922"
fi
printf '127.0.0.1 localhost\n%s %s\n%s.1 n1\n%s.2 n2\n' "$NET.254" "$(hostname -s)" "$NET" "$NET" > "$LAB/etc/hosts"

# Each node offers all CPUs and half the memory: the two nodes share this machine.
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 2048 - 512 ))
cat > "$LAB/etc/slurm.conf.tmp" <<CONF
ClusterName=llmblocks
SlurmctldHost=$(hostname -s)($CONTROLLER)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16917
SlurmdPort=16918
AuthType=auth/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$LAB/run/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation=$LAB/state
SlurmdSpoolDir=$LAB/spool/%n
SlurmctldPidFile=$LAB/run/slurmctld.pid
SlurmdPidFile=$LAB/run/slurmd-%n.pid
SlurmctldLogFile=$LAB/log/slurmctld.log
SlurmdLogFile=$LAB/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# test pending jobs every second (default 60 s), so a requeued job restarts promptly
SchedulerParameters=sched_interval=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
$NODE1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
$NODE2 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
mv "$LAB/etc/slurm.conf.tmp" "$LAB/etc/slurm.conf"
echo "export SLURM_CONF=$LAB/etc/slurm.conf" > "$LAB/env.sh"

# Daemons: munged, slurmctld, then one slurmd per node.
MUNGE_SOCKET=$LAB/run/munge.socket
STARTED=""
if ! running "$LAB/run/munged.pid"; then
  STARTED+=" munged"
  munged --key-file="$LAB/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$LAB/run/munged.pid" \
    --log-file="$LAB/log/munged.log" --seed-file="$LAB/munge/seed"
fi
munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET" >/dev/null || cannot "munge does not work (log: $LAB/log/munged.log)"

running "$LAB/run/slurmctld.pid" || { STARTED+=" slurmctld"; slurmctld -c; }  # -c: a clean state, no jobs from an earlier cluster
for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done

for node in n1 n2; do
  running "$LAB/run/slurmd-$node.pid" && continue
  STARTED+=" slurmd-$node"
  mkdir -p "$LAB/spool/$node"
  if [ "$MODE" = netns ]; then
    # nsenter, not `ip netns exec`: the latter remounts /sys, and slurmd then finds no cgroup filesystem.
    # A private mount and UTS namespace give the node its own hostname and /etc/hosts.
    nsenter --net=/run/netns/llb-$node -- unshare --mount --uts --propagation private -- \
      sh -c "mount --bind $LAB/etc/hosts /etc/hosts && hostname $node && exec slurmd -N $node"
  else
    slurmd -N $node
  fi
done

state=""
for _ in $(seq 150); do
  state=$(sinfo -h -N -o '%N=%t' | sort | tr '\n' ' ')
  [ "$state" = "n1=idle n2=idle " ] && break
  sleep 0.2
done
[ "$state" = "n1=idle n2=idle " ] || { tail -3 "$LAB"/log/slurmd-*.log; cannot "nodes not idle: $state"; }

{ echo "munged $(cat "$LAB/run/munged.pid")"; echo "slurmctld $(cat "$LAB/run/slurmctld.pid")"
  for node in n1 n2; do echo "slurmd-$node $(cat "$LAB/run/slurmd-$node.pid")"; done; } > "$LAB/run/pids"
echo "$MODE" > "$LAB/run/mode"
say "up ($MODE mode): $state; started:${STARTED:- nothing, all were running}; source $LAB/env.sh to use it"
