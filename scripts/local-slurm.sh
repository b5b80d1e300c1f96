#!/usr/bin/env bash
# A real single-node Slurm on this machine, for tests and CI (Debian 12 packages, run as root,
# no systemd). The node is both the controller and the only compute node; it has two
# partitions, `main` (default) and `gpu`, and stand-in GPU devices so GPU rules' real
# `--gpus` requests are scheduled (the code itself falls back to CPU there).
#
#   scripts/local-slurm.sh install   apt-get install the Slurm + munge packages (only when missing)
#   scripts/local-slurm.sh start     write /etc/slurm/{slurm,gres}.conf, start munged, slurmctld,
#                                    slurmd; wait until the node is idle (idempotent: a running,
#                                    unchanged setup is left alone; a changed config restarts)
#   scripts/local-slurm.sh stop      stop the daemons (slurmd, slurmctld, munged) by pid file
#   scripts/local-slurm.sh status    daemons, node and partition state; exit 0 only when usable
#
# Environment knobs:
#   SLURM_FAKE_GPUS=2      stand-in GPUs on the node (files /run/fake-gpu/gpu0..N-1)
#   SLURM_STATE_RESET=1    start slurmctld with a clean state (job ids start again at 1)
#   SLURM_START_TIMEOUT=60 seconds to wait for the node to become idle
#
# No slurmdbd: accounting is off, so `sacct` does not work here. Snakemake's slurm executor
# must poll with `squeue` (profiles/slurm sets slurm-status-command: squeue), which works
# because MinJobAge keeps finished jobs visible to squeue for 10 minutes.
# Facts behind every setting: see profiles/README.md ("Local Slurm for tests").
set -euo pipefail

PACKAGES=(slurm-wlm slurmctld slurmd slurm-client munge)
CONF_DIR=/etc/slurm
SLURM_CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
FAKE_GPU_DIR=/run/fake-gpu
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
FAKE_GPUS=${SLURM_FAKE_GPUS:-2}
START_TIMEOUT=${SLURM_START_TIMEOUT:-60}

SCRIPT_NAME=local-slurm
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
}

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            echo "$pkg"
        fi
    done
}

cmd_install() {
    local missing
    missing=$(missing_packages)
    if [[ -z $missing ]]; then
        log "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    need_root
    log "installing: $(echo $missing)"
    apt_install_without_daemons "${PACKAGES[@]}"
    log "installed"
}

host() { hostname -s; }

real_memory_mb() {
    # 85% of MemTotal: slurmd detects a little less than MemTotal, and a configured
    # RealMemory above what slurmd detects makes the node INVAL.
    awk '/^MemTotal:/ {printf "%d\n", $2 / 1024 * 0.85}' /proc/meminfo
}

render_slurm_conf() {
    local h cpus mem last
    h=$(host)
    cpus=$(nproc)
    mem=$(real_memory_mb)
    cat <<EOF
# Written by scripts/local-slurm.sh: single-node test cluster on $h. Do not edit by hand.
ClusterName=ci
SlurmctldHost=$h(127.0.0.1)
# Root runs every daemon: no spool/log ownership changes needed.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroup setup needed: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Cores and memory are consumable: --cpus-per-task and --mem are enforced at scheduling.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
# A node that was DOWN returns by itself when slurmd registers again.
ReturnToService=2
# Finished jobs stay visible to squeue for 10 min: the executor's squeue status mode needs
# MinJobAge >= 3 x slurm-init-seconds-before-status-checks.
MinJobAge=600
# No slurmdbd: no accounting (sacct does not work; poll with squeue).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# A job that gives no --mem gets 1 GB per CPU instead of the whole node.
DefMemPerCPU=1024
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
GresTypes=gpu
NodeName=$h NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=main Nodes=$h Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$h MaxTime=INFINITE State=UP
EOF
}

render_gres_conf() {
    local h
    h=$(host)
    # File= is required: a Count= without File= makes slurmd report 0 GPUs and the node INVAL.
    cat <<EOF
# Written by scripts/local-slurm.sh: stand-in GPUs (empty files), no NVML autodetection.
AutoDetect=off
NodeName=$h Name=gpu File=$FAKE_GPU_DIR/gpu[0-$((FAKE_GPUS - 1))]
EOF
}

pid_alive() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# write_if_changed FILE CONTENT: prints "changed" when the file was (re)written
write_if_changed() {
    local file=$1 content=$2
    if [[ -f $file ]] && [[ "$(cat "$file")" == "$content" ]]; then
        return 0
    fi
    printf '%s\n' "$content" >"$file.tmp"
    mv "$file.tmp" "$file"
    echo changed
}

ensure_munge_key() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
}

start_munge() {
    if pid_alive "$MUNGE_PID" && munge -n | unmunge >/dev/null 2>&1; then
        return 0
    fi
    ensure_munge_key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    rm -f "$MUNGE_PID" /run/munge/munge.socket.2
    runuser -u munge -- munged
    local i
    for i in $(seq 1 50); do
        munge -n | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

stop_daemon() {
    local name=$1 pidfile=$2 pid i
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

node_state() {
    sinfo -h -n "$(host)" -o %t 2>/dev/null | head -n1
}

# daemon_died NAME PIDFILE: fail fast when a daemon wrote its pid file and then exited (a bad
# config is fatal at startup). A missing pid file means it is still daemonizing.
daemon_died() {
    local name=$1 pidfile=$2
    if [[ -s $pidfile ]] && ! pid_alive "$pidfile"; then
        die "$name exited; last lines of $LOG_DIR/$name.log: $(tail -n 3 "$LOG_DIR/$name.log" 2>/dev/null)"
    fi
}

wait_idle() {
    local deadline state resumed=0
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        daemon_died slurmctld "$CTLD_PID"
        daemon_died slurmd "$SLURMD_PID"
        state=$(node_state || true)
        case $state in
            idle | mix | alloc | comp) return 0 ;;
            drain* | drng | down* | inval*)
                # A node left DOWN/DRAINED by an earlier run: resume it once.
                if ((resumed == 0)); then
                    scontrol update NodeName="$(host)" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.5
    done
    scontrol show node "$(host)" >&2 || true
    die "node $(host) not idle after ${START_TIMEOUT}s (state '${state:-?}'); see $LOG_DIR/*.log"
}

# Never take over (or stop) a real cluster: only a slurm.conf written by this script is ours.
check_ours() {
    if [[ -f $SLURM_CONF ]] && ! grep -q "^# Written by scripts/local-slurm.sh" "$SLURM_CONF"; then
        die "$SLURM_CONF exists and was not written by this script; refusing to touch this Slurm"
    fi
}

cmd_start() {
    need_root
    [[ -z $(missing_packages) ]] || die "Slurm packages missing: run 'scripts/local-slurm.sh install' first"
    check_ours
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd "$FAKE_GPU_DIR"
    local i
    for ((i = 0; i < FAKE_GPUS; i++)); do
        touch "$FAKE_GPU_DIR/gpu$i"
    done
    local changed
    changed=$(write_if_changed "$SLURM_CONF" "$(render_slurm_conf)")
    changed+=$(write_if_changed "$GRES_CONF" "$(render_gres_conf)")
    start_munge
    if [[ -n $changed ]]; then
        # Changing Gres= or the node line needs a restart; `scontrol reconfigure` is not enough.
        log "configuration written to $CONF_DIR; (re)starting slurmctld and slurmd"
        stop_daemon slurmd "$SLURMD_PID"
        stop_daemon slurmctld "$CTLD_PID"
    fi
    if ! pid_alive "$CTLD_PID"; then
        rm -f "$CTLD_PID"
        if [[ ${SLURM_STATE_RESET:-0} == 1 ]]; then
            slurmctld -c -i
        else
            slurmctld -i
        fi
    fi
    if ! pid_alive "$SLURMD_PID"; then
        rm -f "$SLURMD_PID"
        slurmd
    fi
    wait_idle
    log "up: node $(host) $(node_state), partitions $(sinfo -h -o %P | tr '\n' ' ')"
}

cmd_stop() {
    need_root
    check_ours
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
    log "stopped"
}

cmd_status() {
    local ok=0 name pidfile
    for name in munged slurmctld slurmd; do
        case $name in
            munged) pidfile=$MUNGE_PID ;;
            slurmctld) pidfile=$CTLD_PID ;;
            slurmd) pidfile=$SLURMD_PID ;;
        esac
        if pid_alive "$pidfile"; then
            echo "$name: running (pid $(cat "$pidfile"))"
        else
            echo "$name: stopped"
            ok=1
        fi
    done
    if ((ok == 0)); then
        sinfo -o "%P %a %D %t %G" || ok=1
        local state
        state=$(node_state || true)
        case $state in
            idle | mix | alloc | comp) ;;
            *) ok=1 ;;
        esac
    fi
    return $ok
}

dispatch "$@"
