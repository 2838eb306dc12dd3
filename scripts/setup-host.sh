#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted scripts for inner shells expand there, on purpose
# Idempotent host setup for trissh (Debian 12): rootless podman for a dedicated user, the local
# base image, and that user's podman API service.
#
#   eval "$(sudo scripts/setup-host.sh)"    # sets CONTAINER_HOST=unix:///run/trissh-podman/podman.sock
#
# As root it:
#   1. installs whatever is missing of the packages below (apt-get update only when needed;
#      the KDC packages' system services are disabled: tests run their own KDC);
#   2. creates the system user trissh-podman (home /var/lib/trissh-podman) with subuids and
#      subgids for TRISSH_MAX_CONTAINERS (1024) user namespaces of TRISSH_USERNS_SIZE (65536)
#      IDs, trissh's [container] userns_size, overlapping no other range (an older, smaller
#      allocation grows; the podman user's namespace takes it once no container exists);
#   3. configures that user's storage (overlay, native if the kernel allows) and OCI runtime
#      (crun if a trivial container runs with it, else runc; the choice is written to
#      ~/.config/containers/containers.conf: delete that file to detect again);
#   4. builds localhost/trissh-base:latest from busybox-static + sftp-server (scripts/build-image.sh)
#      when its recipe changed, and checks it; likewise localhost/trissh-debian:latest with
#      mmdebstrap (a minute the first time; a warning, not a failure, when Debian's mirror
#      cannot be reached);
#   5. starts `podman system service` as that user on /run/trissh-podman/podman.sock unless the
#      socket already answers, and waits until it does.
# Not as root it only looks for a podman API socket that already answers ($CONTAINER_HOST, then
# $XDG_RUNTIME_DIR/podman/podman.sock).
#
# Progress goes to stderr; the LAST (and only) line on stdout is CONTAINER_HOST=unix://...
# A second run with everything in place changes nothing and takes about a second.
set -euo pipefail

# The names are fixed for trissh; the overrides exist to test this script beside a live setup.
PUSER=${TRISSH_PODMAN_USER:-trissh-podman}
PHOME=${TRISSH_PODMAN_HOME:-/var/lib/$PUSER}
RUNDIR=${TRISSH_PODMAN_RUNDIR:-/run/$PUSER}
XDG=$RUNDIR/xdg
SOCK=$RUNDIR/podman.sock
LOG=$RUNDIR/service.log
PIDFILE=$RUNDIR/service.pid
LOCKFILE=/run/lock/trissh-setup-host.lock
# Work that must follow a change even if this run dies before it (a failed self-test, a Ctrl-C):
# the next run finds the change already made and would not redo it, so these markers remember.
# Root's own directory: root never follows the podman user's symlinks.
SETUP_STATE=/var/lib/trissh-setup
SELFTEST_PENDING=$SETUP_STATE/selftest-pending
DEBIAN_SELFTEST_PENDING=$SETUP_STATE/debian-selftest-pending
RESTART_PENDING=$SETUP_STATE/restart-pending
# Every container gets a user namespace of its own ([container] userns_size in trissh's
# configuration), so the podman user needs that many subordinate IDs per container at once.
MAX_CONTAINERS=${TRISSH_MAX_CONTAINERS:-1024}
USERNS_SIZE=${TRISSH_USERNS_SIZE:-65536}
SUBID_COUNT=$((MAX_CONTAINERS * USERNS_SIZE))
PACKAGES=(podman runc crun uidmap slirp4netns fuse-overlayfs catatonit busybox-static
          openssh-sftp-server openssh-client tmux python3-venv curl gcc libc6-dev musl-tools
          asciinema putty-tools dropbear-bin bsdutils libssl-dev haproxy
          libkrb5-dev krb5-kdc krb5-admin-server krb5-user
          mmdebstrap docker-registry apache2-utils rsync git)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

exec 3>&1 1>&2      # fd 3 is the real stdout, reserved for the final CONTAINER_HOST line
START=$EPOCHREALTIME

log() { printf 'setup-host: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() {
    local us=$((${EPOCHREALTIME//[.,]/} - ${START//[.,]/}))
    printf '%d.%02d' $((us / 1000000)) $((us % 1000000 / 10000))
}

# ping_socket PATH: true if a podman API answers on that unix socket.
ping_socket() {
    [[ -S $1 ]] || return 1
    [[ $(curl -sS --max-time 3 --unix-socket "$1" http://d/v4.0.0/libpod/_ping 2>/dev/null) == OK ]]
}

# ---------------------------------------------------------------------------- not root
if ((EUID != 0)); then
    command -v curl >/dev/null || die "not root, and curl is missing to look for a running podman service"
    candidates=()
    [[ ${CONTAINER_HOST:-} == unix://* ]] && candidates+=("${CONTAINER_HOST#unix://}")
    [[ -n ${XDG_RUNTIME_DIR:-} ]] && candidates+=("$XDG_RUNTIME_DIR/podman/podman.sock")
    for s in "${candidates[@]}"; do
        if ping_socket "$s"; then
            log "not root: using the podman service that already answers on $s"
            echo "CONTAINER_HOST=unix://$s" >&3
            exit 0
        fi
    done
    die "not root, and no podman API answers on ${candidates[*]:-\$CONTAINER_HOST or \$XDG_RUNTIME_DIR/podman/podman.sock}.
  Either run this script as root (sudo $0) to set up a dedicated rootless podman user,
  or start your own rootless podman service:  systemctl --user enable --now podman.socket"
fi

mkdir -p "$(dirname "$LOCKFILE")"
exec 9>"$LOCKFILE"
flock -w 600 9 || die "another setup-host.sh holds $LOCKFILE"
install -d -m 0700 -o root -g root "$SETUP_STATE"

# ---------------------------------------------------------------------------- helpers
# Everything that touches the user's files or podman runs AS the user, with a clean environment
# (an inherited CONTAINER_HOST would turn podman into a remote client) and without our fds 3/9
# (a lingering podman pause process holding them would block `$(setup-host.sh)` or the lock).
as_user() {
    (cd / && exec runuser -u "$PUSER" -- env -i \
        HOME="$PHOME" XDG_RUNTIME_DIR="$XDG" USER="$PUSER" LOGNAME="$PUSER" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@") 3>&- 9>&-
}
pod() { as_user podman "$@"; }

# write_user_file PATH < CONTENT: (re)write a file in the user's home if its content differs.
# Returns 0 if it wrote, 1 if the file was already right.
write_user_file() {
    local path=$1 content
    content=$(cat)
    if [[ -f $path && ! -L $path && $(<"$path") == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" | as_user sh -c 'mkdir -p "$(dirname "$1")" && cat >"$1.tmp" && mv -f "$1.tmp" "$1"' sh "$path"
}

service_pid() { # the pid of the service we started, if it is still that process
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(stat -c %U "/proc/$pid" 2>/dev/null) == "$PUSER" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'podman system service' || return 1
    echo "$pid"
}

stop_service() {
    local pid i
    pid=$(service_pid) || return 0
    log "stopping podman service (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------- 1. packages
missing=()
declare -A installed=()
while read -r pkg status; do
    [[ $status == installed ]] && installed[$pkg]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
for pkg in "${PACKAGES[@]}"; do
    [[ -n ${installed[$pkg]:-} ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    dpkg --configure -a >&2 # an install cut short earlier (Ctrl-C) would make apt refuse
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    # docker-registry is for the tests, which start their own on loopback: never a system one.
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && [[ -d /run/systemd/system ]]; then
        systemctl disable --now docker-registry >&2 2>/dev/null || true
    fi
    log "packages installed ($(elapsed) s)"
    # The Kerberos tests start their own KDC on loopback, with their own realm: never the
    # system's (which has no realm anyway and would only fail to start).
    if [[ " ${missing[*]} " == *" krb5-"* ]] && [[ -d /run/systemd/system ]]; then
        systemctl disable --now krb5-kdc krb5-admin-server >&2 2>/dev/null || true
    fi
else
    log "packages: all present"
fi

# ---------------------------------------------------------------------------- 2. user + subids
if ! getent passwd "$PUSER" >/dev/null; then
    useradd --system --user-group --home-dir "$PHOME" --create-home \
        --shell /usr/sbin/nologin --comment "trissh rootless podman" "$PUSER"
    log "created user $PUSER"
fi
PUID=$(id -u "$PUSER")
PGID=$(id -g "$PUSER")
[[ -d $PHOME ]] || install -d -m 0700 -o "$PUID" -g "$PGID" "$PHOME"

for f in /etc/subuid /etc/subgid; do [[ -e $f ]] || install -m 0644 /dev/null "$f"; done
# subid_own FILE: "START COUNT" of each of the podman user's ranges in FILE.
subid_own() { awk -F: -v u="$PUSER" -v i="$PUID" '$1 == u || $1 == i { print $2, $3 }' "$1"; }
# subid_free FILE... START COUNT: true if no other user's range in the files meets [START, START+COUNT).
subid_free() {
    local start=${*: -2:1} count=${*: -1}
    awk -F: -v u="$PUSER" -v i="$PUID" -v s="$start" -v e="$((start + count))" \
        'NF >= 3 && $1 != u && $1 != i && $2 < e && $2 + $3 > s { bad = 1 } END { exit bad }' "${@:1:$#-2}"
}
# subid_grow FILE: give the user SUBID_COUNT IDs in FILE, keeping the IDs it has (files
# written directly: usermod refuses while the podman user runs processes). Returns 1 if
# nothing had to change.
subid_grow() {
    local file=$1 ranges have=0 start count
    ranges=$(subid_own "$file")
    while read -r start count; do [[ -n $start ]] && have=$((have + count)); done <<<"$ranges"
    ((have < SUBID_COUNT)) || return 1
    if [[ $(wc -l <<<"$ranges") == 1 && -n $ranges ]] && read -r start count <<<"$ranges" \
        && subid_free /etc/subuid /etc/subgid "$start" "$SUBID_COUNT"; then
        count=$SUBID_COUNT   # the one range grows where it is
        awk -F: -v OFS=: -v u="$PUSER" -v i="$PUID" -v c="$count" \
            '($1 == u || $1 == i) { $3 = c } { print }' "$file" >"$file.trissh-new"
    else   # a new range above every other (the same in both files), for what is missing
        start=$FRESH_START
        count=$((SUBID_COUNT - have))
        { cat "$file"; echo "$PUSER:$start:$count"; } >"$file.trissh-new"
    fi
    chmod 0644 "$file.trissh-new" && mv -f "$file.trissh-new" "$file"
    log "subordinate ids for $PUSER in $file: $start-$((start + count - 1)) (${MAX_CONTAINERS} namespaces of $USERNS_SIZE)"
}
# First free 64 Ki-aligned start above every range in either file (>= 100000).
FRESH_START=$(awk -F: -v m=100000 'NF >= 3 && $2 + $3 > m { m = $2 + $3 } END { print m }' /etc/subuid /etc/subgid)
FRESH_START=$(((FRESH_START + 65535) / 65536 * 65536))
subid_grow /etc/subuid || true
subid_grow /etc/subgid || true

# Run directory: created by root in root-owned /run, owned by the user (podman creates the
# socket there). The XDG runtime dir inside it is created by the user itself.
install -d -m 0755 -o "$PUID" -g "$PGID" "$RUNDIR"
as_user sh -c 'mkdir -p "$1" && chmod 0700 "$1"' sh "$XDG"
[[ $(stat -c '%U %a' "$XDG") == "$PUSER 700" ]] || die "$XDG is not a 0700 directory owned by $PUSER"

# The podman user's namespace is made once (by its pause process) from the files of that
# moment: new IDs count only after `podman system migrate`, which stops every container. So
# it runs only when the user has none; otherwise the next run (or the operator) does it.
if [[ -d $PHOME/.local/share/containers ]]; then
    live=$(pod info --format '{{range .Host.IDMappings.UIDMap}}{{.Size}} {{end}}' 2>/dev/null || true)
    live_ids=0
    for n in $live; do live_ids=$((live_ids + n)); done
    wanted=$((1 + $(subid_own /etc/subuid | awk '{ n += $2 } END { print n + 0 }')))
    if ((live_ids < wanted)); then
        if [[ -z $(pod ps -aq 2>/dev/null) ]]; then
            stop_service
            pod system migrate >&2 || true   # re-read the new subid ranges
            log "podman's user namespace now has $wanted ids (was $live_ids)"
        else
            log "WARNING: $PUSER's namespace has $live_ids ids of $wanted: containers exist, so" \
                "the new ones count only after: runuser -u $PUSER -- podman system migrate" \
                "(stops them), or a later run of this script when none exists"
        fi
    fi
fi

# ---------------------------------------------------------------------------- 3a. storage
STORAGE_CONF=$PHOME/.config/containers/storage.conf
storage_conf() { # $1 = native | fuse
    printf '# written by trissh scripts/setup-host.sh\n[storage]\ndriver = "overlay"\n'
    [[ $1 == fuse ]] && printf '\n[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n'
    return 0
}
storage_state() { # prints "overlay true|false" when podman works with the configured driver
    pod info --format '{{.Store.GraphDriverName}} {{index .Store.GraphStatus "Native Overlay Diff"}}' 2>/dev/null
}

state=""
if [[ -f $STORAGE_CONF && ( $(<"$STORAGE_CONF") == "$(storage_conf native)" || $(<"$STORAGE_CONF") == "$(storage_conf fuse)" ) ]]; then
    state=$(storage_state || true)
fi
if [[ $state != overlay* ]]; then
    for variant in native fuse; do
        if write_user_file "$STORAGE_CONF" < <(storage_conf "$variant"); then
            log "wrote $STORAGE_CONF (overlay, $variant)"
        fi
        state=$(storage_state || true)
        [[ $state == overlay* ]] && break
        log "storage is not usable as overlay ($variant): resetting the user's podman storage"
        stop_service
        pod system reset -f >&2 || true
        state=$(storage_state || true)
        [[ $state == overlay* ]] && break
    done
    [[ $state == overlay* ]] || die "podman storage for $PUSER does not work with overlay; see: runuser -u $PUSER -- podman info"
    storage_changed=1
    touch "$RESTART_PENDING"
fi
read -r graph_driver native_diff <<<"$state"

# ---------------------------------------------------------------------------- 4a. image
# shellcheck source=build-image.sh source-path=SCRIPTDIR
source "$HERE/build-image.sh"
image_result=$(image_import "$TRISSH_IMAGE")
if [[ $image_result == built ]]; then
    touch "$SELFTEST_PENDING"
    log "built image $TRISSH_IMAGE (recipe $(image_recipe_hash))"
else
    log "image $TRISSH_IMAGE is up to date"
fi

# ---------------------------------------------------------------------------- 4b. exec helper
# trissh-exec (helper/*.c) is bind-mounted into every container as the parent of each session's
# program (and, as the agent, makes sockets inside for forwarding). Static with musl, so it runs
# in any image and resolves names without the image's NSS modules (a static glibc would load
# them); rebuilt only when its sources change.
HELPER_DIR=$HERE/../helper
HELPER_SRCS=("$HELPER_DIR/trissh-exec.c" "$HELPER_DIR/agent-sockets.c")
HELPER_BIN=/usr/local/lib/trissh/trissh-exec
helper_hash=$(cat "${HELPER_SRCS[@]}" "$HELPER_DIR"/*.h | sha256sum | cut -c1-16)
if [[ ! -x $HELPER_BIN || $(cat "$HELPER_BIN.source" 2>/dev/null) != "$helper_hash" ]]; then
    install -d -m 0755 "$(dirname "$HELPER_BIN")"
    musl-gcc -static -O2 -s -Wall -Wextra -Werror -o "$HELPER_BIN.new" "${HELPER_SRCS[@]}" \
        || die "cannot build $HELPER_BIN from ${HELPER_SRCS[*]} (needs musl-tools)"
    chmod 0755 "$HELPER_BIN.new"
    mv -f "$HELPER_BIN.new" "$HELPER_BIN"
    echo "$helper_hash" >"$HELPER_BIN.source"
    log "built $HELPER_BIN"
fi

# ---------------------------------------------------------------------------- 3b. OCI runtime
CONTAINERS_CONF=$PHOME/.config/containers/containers.conf
# podman keeps an exec session's conmon (two processes) alive this long after the exec ends, so
# the exit code can still be read (podman's default: 300 s, i.e. hundreds of idle conmons on a
# busy server). trissh reads ExitCode right after the stream ends; at 0 that read races the cleanup.
EXIT_COMMAND_DELAY=30
containers_conf() { # $1 = runtime
    cat <<EOF
# written by trissh scripts/setup-host.sh; delete this file and rerun to detect the runtime again
[engine]
# detected: crun if a trivial container runs with it, else runc
runtime = "$1"
# seconds an exec session's conmon lingers after the exec ends (podman's default is 300)
exit_command_delay = $EXIT_COMMAND_DELAY

[containers]
# no session keyring per container: the kernel allows a user only kernel.keys.maxkeys (200)
# keys, and with one per container runc fails ("unable to join session keyring") past that
keyring = false
EOF
}
runtime=""
if [[ -f $CONTAINERS_CONF ]]; then
    runtime=$(sed -n 's/^runtime *= *"\([a-z]*\)".*/\1/p' "$CONTAINERS_CONF" | head -n1)
fi
if [[ -n $runtime ]] && command -v "$runtime" >/dev/null; then
    runtime_note="configured in $CONTAINERS_CONF; delete it to detect again"
else
    runtime=""
    for candidate in crun runc; do
        command -v "$candidate" >/dev/null || { log "runtime $candidate: not installed"; continue; }
        pod rm -f trissh-runtime-probe >/dev/null 2>&1 || true
        if out=$(pod run --rm --name trissh-runtime-probe --network none --runtime "$candidate" \
                "$TRISSH_IMAGE" true 2>&1); then
            runtime=$candidate
            break
        fi
        pod rm -f trissh-runtime-probe >/dev/null 2>&1 || true
        log "runtime $candidate: a trivial container fails: $(tail -n1 <<<"$out")"
    done
    [[ -n $runtime ]] || die "neither crun nor runc can run a container as $PUSER"
    runtime_note="detected: a trivial container runs with it"
    runtime_changed=1
fi
if write_user_file "$CONTAINERS_CONF" < <(containers_conf "$runtime"); then
    log "wrote $CONTAINERS_CONF (runtime $runtime, exit_command_delay $EXIT_COMMAND_DELAY)"
    engine_changed=1
    touch "$RESTART_PENDING"
fi
log "OCI runtime: $runtime ($runtime_note)"

[[ -z ${runtime_changed:-} ]] || touch "$SELFTEST_PENDING"
if [[ -f $SELFTEST_PENDING ]]; then
    image_selftest "$TRISSH_IMAGE" || die "the image $TRISSH_IMAGE fails its self-test"
    rm -f "$SELFTEST_PENDING"
    log "image self-test passed (sh exit codes, cat, head -c, sleep, kill, stty under a tty, sftp-server)"
fi

# ---------------------------------------------------------------------------- 4c. Debian image
# A real distribution for users and for the tests of git, rsync, sftp resume and tmux
# (scripts/build-image.sh import-debian); rebuilt only when its recipe hash changes.
if debian_result=$(debian_import "$TRISSH_DEBIAN_IMAGE"); then
    [[ $debian_result != built ]] || touch "$DEBIAN_SELFTEST_PENDING"
    if [[ -f $DEBIAN_SELFTEST_PENDING ]]; then
        debian_selftest "$TRISSH_DEBIAN_IMAGE" || die "the image $TRISSH_DEBIAN_IMAGE fails its self-test"
        rm -f "$DEBIAN_SELFTEST_PENDING"
        log "image $TRISSH_DEBIAN_IMAGE built or pending, self-tested (recipe $(debian_recipe_hash)) ($(elapsed) s)"
    else
        log "image $TRISSH_DEBIAN_IMAGE is up to date"
    fi
else
    log "WARNING: could not build $TRISSH_DEBIAN_IMAGE (is Debian's mirror reachable?);" \
        "the tests that need it will say so"
fi

# ---------------------------------------------------------------------------- 5. API service
if [[ -f $RESTART_PENDING ]] && ping_socket "$SOCK"; then
    stop_service   # it runs with the old configuration
fi
if ping_socket "$SOCK"; then
    log "podman service already answers on $SOCK"
else
    stop_service   # ours, but not answering
    as_user rm -f "$SOCK"
    # Fully detached: new session, stdio on /dev/null; the user's shell opens the log itself so
    # root never writes into the user-owned directory.
    (cd / && exec setsid -f runuser -u "$PUSER" -- env -i \
        HOME="$PHOME" XDG_RUNTIME_DIR="$XDG" USER="$PUSER" LOGNAME="$PUSER" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        sh -c 'echo $$ >"$1"; exec podman system service --time=0 "unix://$2" >>"$3" 2>&1' \
        sh "$PIDFILE" "$SOCK" "$LOG") </dev/null >/dev/null 2>&1 3>&- 9>&-
    log "started podman system service; waiting for $SOCK"
    for ((i = 0; i < 200; i++)); do
        ping_socket "$SOCK" && break
        ((i < 10)) || service_pid >/dev/null || break   # it died: no point waiting 20 s
        sleep 0.1
    done
    ping_socket "$SOCK" || die "the podman service did not answer on $SOCK (waited up to 20 s); last lines of $LOG:
$(tail -n 20 "$LOG" 2>/dev/null)"
    log "podman service answers on $SOCK (pid $(service_pid || echo '?'))"
fi
rm -f "$RESTART_PENDING"

# ---------------------------------------------------------------------------- report
version=$(curl -sS --max-time 3 --unix-socket "$SOCK" http://d/v4.0.0/libpod/version 2>/dev/null \
    | sed -n 's/.*"Version":"\([^"]*\)".*/\1/p' | head -n1)
log "ready in $(elapsed) s: podman ${version:-?} as $PUSER (uid $PUID), runtime $runtime," \
    "storage $graph_driver (native overlay diff: $native_diff), image $TRISSH_IMAGE," \
    "socket $SOCK (log $LOG)"
echo "CONTAINER_HOST=unix://$SOCK" >&3
