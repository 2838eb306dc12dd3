#!/usr/bin/env bash
# Host preparation for `scripts/nox -s bench` (run as root, idempotent, ~1 s when done):
#   1. openssh-server installed if missing, without ever starting the system service
#      (a temporary policy-rc.d denies it when the host has none);
#   2. the user trissh-bench (shell /bin/sh, not locked) that the benchmark's own sshd
#      logs in as: a host shell without root's dotfiles;
#   3. localhost/trissh-bench:latest (scripts/build-image.sh import-bench) in the podman
#      service at $CONTAINER_HOST, when its recipe changed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_USER=trissh-bench
log() { printf 'bench/prepare-host: %s\n' "$*" >&2; }

((EUID == 0)) || { log "run as root (it installs openssh-server and creates $BENCH_USER)"; exit 1; }

if [[ ! -x /usr/sbin/sshd ]]; then
    log "installing openssh-server (the system service stays stopped)"
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends openssh-server >&2 \
        || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends openssh-server >&2; }
    [[ -n $made_policy ]] && rm -f "$policy"
fi
mkdir -p /run/sshd && chmod 0755 /run/sshd   # sshd's privilege-separation directory

if ! getent passwd "$BENCH_USER" >/dev/null; then
    useradd --system --user-group --create-home --home-dir "/var/lib/$BENCH_USER" \
        --shell /bin/sh --comment "trissh benchmark (sshd peer)" "$BENCH_USER"
    log "created user $BENCH_USER"
fi
# Without PAM, sshd refuses accounts whose password field starts with "!" (locked).
[[ $(getent shadow "$BENCH_USER" | cut -d: -f2) == '*' ]] || usermod -p '*' "$BENCH_USER"

[[ -n ${CONTAINER_HOST:-} ]] || { log "CONTAINER_HOST is not set (run scripts/setup-host.sh)"; exit 1; }
result=$(bash "$HERE/../scripts/build-image.sh" import-bench)
log "image localhost/trissh-bench:latest: $result"
