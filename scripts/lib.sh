# Shared by scripts/local-slurm.sh and scripts/local-mlflow.sh (sourced, not run): logging, the
# Debian install that must not start daemons, and the install|start|stop|status dispatch.
# The sourcing script sets SCRIPT_NAME (the log prefix) and defines cmd_install, cmd_start,
# cmd_stop and cmd_status.

log() { echo "$SCRIPT_NAME: $*" >&2; }
die() { log "error: $*"; exit 1; }

# apt_install_without_daemons PACKAGE...: apt-get install (as root) without apt starting any
# daemon itself (there is no init system here; the scripts run their own): a policy-rc.d
# returning 101 forbids it. Docker images ship one; it is created only if missing.
apt_install_without_daemons() {
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq
    timeout 900 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    if [[ $own_policy -eq 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
}

# dispatch "$@": run cmd_<first argument> for install, start, stop or status; else usage, exit 2.
dispatch() {
    case ${1:-} in
        install | start | stop | status) "cmd_$1" ;;
        *)
            echo "usage: $0 {install|start|stop|status}" >&2
            exit 2
            ;;
    esac
}
