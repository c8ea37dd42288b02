#!/bin/bash
# Every real-GPU check of powerbandit in one go, on a GPU node, as root, from the repository root:
#
#     sudo bash benchmarks/gpu_session.sh [--quick]
#
# 1. the NVML path: energy counter vs polling, the counter's update period, a power-limit round trip
#    and how long NVML takes to enforce a new limit (benchmarks/gpu_check.py);
# 2. the node agent with an unprivileged client (`nobody`): set, read back, SIGKILL the client, the
#    original limit back (gpu_check.py --agent); restore times, SetPowerLimit latency and the agent's
#    memory (agent_restore.py --nvml);
# 3. how power settles after a change and what short windows misread (power_settle.py);
# 4. the SDK end to end on a GPU-bound model (examples/train_synthetic_classifier.py): as root, NVML
#    directly, and as `nobody` through a node agent, against one `powerbandit serve` on SQLite; the
#    jobs' profiles and choices as `powerbandit jobs show` prints them.
#
# --quick skips 3 and trains a small model in 4. Each step has a time limit and prints its exit
# status; the power limit in force is printed at the end (it must be the one at the start). Needs
# the package's dependencies importable by python3 (PyTorch with CUDA for 3 and 4), setpriv, and a
# user `nobody` who can read this checkout and python3's packages. Exit status 1 where there is no
# NVIDIA GPU, else 0 (read the steps' statuses). docs/integrations.md ("On a real GPU") and
# docs/node-agent.md hold what it printed on an H200.
set -u
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
    echo "no NVIDIA GPU here (nvidia-smi is missing or finds none): run this on a GPU node" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "run as root (sudo): the checks set power limits and start the node agent" >&2
    exit 1
fi
quick=0
[ "${1:-}" = "--quick" ] && quick=1
export PYTHONUNBUFFERED=1
work=$(mktemp -d /tmp/pb-gpu-session-XXXXXX)
chmod 755 "$work"
mkdir -m 777 "$work/home"
step() { echo; echo "######## $* ($(date +%T))"; }
limits() { nvidia-smi --query-gpu=index,power.limit,enforced.power.limit --format=csv,noheader; }
cleanup() {
    [ -n "${agent_pid:-}" ] && kill -TERM "$agent_pid" 2> /dev/null && wait "$agent_pid"
    [ -n "${server_pid:-}" ] && kill -TERM "$server_pid" 2> /dev/null && wait "$server_pid"
    rm -rf "$work"
}
trap cleanup EXIT

step "GPUs, limits in force at the start"
nvidia-smi --query-gpu=index,name,driver_version,power.limit,power.min_limit,power.max_limit --format=csv
step "1. NVML path"; timeout 120 python3 benchmarks/gpu_check.py --seconds 5 --tail 3; echo "rc=$?"
step "2. agent, nobody client"; timeout 90 python3 benchmarks/gpu_check.py --agent --client-user nobody; echo "rc=$?"
timeout 180 python3 benchmarks/agent_restore.py --nvml --client-user nobody --trials 10 --calls 100; echo "rc=$?"
if [ "$quick" = 0 ]; then
    step "3. power settling"; timeout 120 python3 benchmarks/power_settle.py; echo "rc=$?"
fi

step "4. SDK end to end"
python3 -m powerbandit serve --db "sqlite:///$work/pb.db" --listen 127.0.0.1:0 > "$work/serve.log" 2>&1 &
server_pid=$!
python3 -m powerbandit agent serve --socket "$work/agent.sock" --socket-mode 0666 --state-dir "$work/agent" \
    > "$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do
    address=$(grep -o 'listening on [0-9.]*:[0-9]*' "$work/serve.log" | head -1 | cut -d' ' -f3)
    [ -n "$address" ] && [ -S "$work/agent.sock" ] && break
    sleep 0.2
done
if [ -z "${address:-}" ] || [ ! -S "$work/agent.sock" ]; then
    echo "the server or the agent did not start:"; cat "$work/serve.log" "$work/agent.log"
else
    hidden=16384
    [ "$quick" = 1 ] && hidden=1024
    example=(examples/train_synthetic_classifier.py --samples 400000 --hidden "$hidden" --max-epochs 6
             --target 0.85 --server "$address" --recurrences 4)
    timeout 600 python3 "${example[@]}" --job-id gpu-session/root; echo "rc=$? (as root, NVML directly)"
    timeout 600 setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups \
        env HOME="$work/home" CUDA_VISIBLE_DEVICES=0 POWERBANDIT_AGENT_SOCKET="$work/agent.sock" \
        python3 "${example[@]}" --job-id gpu-session/nobody
    echo "rc=$? (as nobody, through the agent)"
    for job in gpu-session/root gpu-session/nobody; do
        python3 -m powerbandit jobs --server "$address" show "$job" | sed -n '/^best:/p;/power profiles/,/^$/p'
    done
    kill -TERM "$agent_pid"; wait "$agent_pid"; echo "agent rc=$?"; agent_pid=""
    tail -3 "$work/agent.log"
fi
step "limits in force at the end"; limits
