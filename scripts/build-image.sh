#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted scripts for inner shells expand there, on purpose
# Build trissh's base image without any container registry.
#
# The root filesystem is busybox-static (the binary plus a symlink for every applet in /bin,
# /sbin, /usr/bin and /usr/sbin), OpenSSH's sftp-server with every library `ldd` lists for it
# (and the dynamic loader), a minimal /etc and the usual mount points. It is written as a
# deterministic tar archive and `podman import`ed as localhost/trissh-base:latest.
#
# The image carries the label trissh.recipe=<hash of this script and of every copied binary>;
# `import` rebuilds only when that hash changed (or the image is missing).
#
# Usage:
#   build-image.sh hash              print the recipe hash
#   build-image.sh tar FILE|-        write the root filesystem as a tar archive
#   build-image.sh import [IMAGE]    build + import with your own `podman` if the recipe changed
#   build-image.sh selftest [IMAGE]  run the checks the backend relies on inside the image
#   build-image.sh import-bench [IMAGE]  the benchmark variant (default localhost/trissh-bench:latest):
#                                    the base image plus GNU coreutils' head, cat, true, sleep and
#                                    dd in /usr/local/bin and dash as /bin/sh (busybox sh runs its
#                                    own applets before PATH, and busybox head manages ~100-230 MB/s)
#   build-image.sh import-debian [IMAGE]  a Debian image (default localhost/trissh-debian:latest)
#                                    built with mmdebstrap from Debian's packages (no registry):
#                                    bash, coreutils, git, rsync, openssh-client, python3, tmux,
#                                    sftp-server and the trissh-exec helper; about 200 MB, ~20-60 s
#                                    to build (the packages are downloaded), ~5 s to import.
#                                    Rebuilt only when its recipe hash changes: the Debian
#                                    functions of this script, the package list, the suite
#                                    and mmdebstrap's version.
#   build-image.sh selftest-debian [IMAGE]  its checks (git, rsync, python3, tmux, ssh-add, sftp)
#
# scripts/setup-host.sh sources this file; it then runs podman through its own `pod` function
# (as the trissh-podman user). Run directly, `pod` is plain `podman`.
set -euo pipefail

TRISSH_IMAGE=${TRISSH_IMAGE:-localhost/trissh-base:latest}
TRISSH_BENCH_IMAGE=${TRISSH_BENCH_IMAGE:-localhost/trissh-bench:latest}
TRISSH_DEBIAN_IMAGE=${TRISSH_DEBIAN_IMAGE:-localhost/trissh-debian:latest}
TRISSH_RECIPE_LABEL=trissh.recipe
BUSYBOX=/bin/busybox
SFTP_SERVER=/usr/lib/openssh/sftp-server
BUILD_IMAGE_SH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

declare -F pod >/dev/null || pod() { podman "$@"; }

# Files copied from the host: busybox, sftp-server, its libraries and the dynamic loader.
# scp serves `scp -O` (the legacy protocol runs `scp -t`/`scp -f` on the server side);
# ssh-add shows that a forwarded agent (ssh -A) is reachable inside.
SCP=/usr/bin/scp
SSH_ADD=/usr/bin/ssh-add
image_inputs() {
    local f
    for f in "$BUSYBOX" "$SFTP_SERVER" "$SCP" "$SSH_ADD"; do
        [[ -x $f ]] || { echo "build-image: $f is missing (apt-get install busybox-static openssh-sftp-server openssh-client)" >&2; return 1; }
    done
    for f in "$SFTP_SERVER" "$SCP" "$SSH_ADD"; do
        if ldd "$f" | grep -q 'not found'; then
            echo "build-image: ldd $f: unresolved libraries" >&2
            return 1
        fi
    done
    printf '%s\n' "$BUSYBOX" "$SFTP_SERVER" "$SCP" "$SSH_ADD"
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    # (with several files ldd prints a "/path:" header line before each file's list: not a library)
    ldd "$SFTP_SERVER" "$SCP" "$SSH_ADD" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u
}

# The bench variant's extra files: GNU tools, dash, and every library they need.
BENCH_TOOLS=(/usr/bin/head /usr/bin/cat /usr/bin/true /usr/bin/sleep /usr/bin/dd /usr/bin/dash)
bench_inputs() {
    local f
    image_inputs
    for f in "${BENCH_TOOLS[@]}"; do
        [[ -x $f ]] || { echo "build-image: $f is missing (coreutils, dash)" >&2; return 1; }
        printf '%s\n' "$f"
        ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }'
    done | sort -u
}

image_recipe_hash() { # [VARIANT]: "" for the base image, "bench" for the benchmark variant
    local inputs
    if [[ ${1:-} == bench ]]; then inputs=$(bench_inputs); else inputs=$(image_inputs); fi
    # The script by content only: a clone at another path builds the same image.
    { sha256sum <"$BUILD_IMAGE_SH"; xargs -d '\n' sha256sum <<<"$inputs"; } | sha256sum | cut -c1-32
}

# image_tar OUT [VARIANT]: write the root filesystem as a tar archive to OUT (a path or "-"
# for stdout); VARIANT "bench" adds the GNU tools and dash (see import-bench above).
image_tar() (
    local out=$1 variant=${2:-} root inputs f applet d
    inputs=$(image_inputs)
    root=$(mktemp -d /tmp/trissh-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT  # the function body is a subshell: this is its own EXIT
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/lib/openssh,etc,root,home,tmp,var/tmp,run,dev,proc,sys}
    chmod 0700 "$root/root"
    chmod 1777 "$root/tmp" "$root/var/tmp"

    install -m 0755 "$BUSYBOX" "$root/bin/busybox"
    mkdir "$root/.applets"
    while read -r applet; do
        [[ $applet == busybox || -z $applet ]] && continue
        ln -s /bin/busybox "$root/.applets/$applet"
    done < <("$BUSYBOX" --list)
    for d in bin sbin usr/bin usr/sbin; do
        cp -an "$root/.applets/." "$root/$d/"
    done
    rm -rf "$root/.applets"

    while read -r f; do
        [[ $f == "$BUSYBOX" ]] && continue
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
    done <<<"$inputs"

    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
EOF
    printf '/bin/sh\n/bin/ash\n' >"$root/etc/shells"
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
    : >"$root/etc/hostname"
    : >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
    chmod 0644 "$root"/etc/*

    if [[ $variant == bench ]]; then
        mkdir -p "$root/usr/local/bin"
        while read -r f; do
            if [[ " ${BENCH_TOOLS[*]} " == *" $f "* ]]; then
                install -m 0755 "$f" "$root/usr/local/bin/$(basename "$f")"
            elif [[ ! -e $root$f ]]; then
                mkdir -p "$root$(dirname "$f")"
                cp -L "$f" "$root$f"
            fi
        done < <(bench_inputs)
        ln -sfn /usr/local/bin/dash "$root/bin/sh"
    fi

    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$out" .
)

# image_import IMAGE [VARIANT]: build and import if the image is missing or its recipe label
# differs. Prints "unchanged" or "built" on stdout.
image_import() {
    local image=${1:-$TRISSH_IMAGE} variant=${2:-} want have
    want=$(image_recipe_hash "$variant")
    have=$(pod image inspect --format "{{index .Labels \"$TRISSH_RECIPE_LABEL\"}}" "$image" 2>/dev/null || true)
    if [[ $have == "$want" ]]; then
        echo unchanged
        return 0
    fi
    image_tar - "$variant" | pod import \
        --change 'CMD ["/bin/sh"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL $TRISSH_RECIPE_LABEL=$want" \
        --message "trissh ${variant:-base} image (busybox-static + sftp-server${variant:+ + GNU tools}), recipe $want" \
        - "$image" >&2
    # Earlier builds are now untagged: drop every one no container still uses (one that
    # was in use at the last import is caught now).
    pod image prune --force --filter "label=$TRISSH_RECIPE_LABEL" >/dev/null 2>&1 || true
    echo built
}

# image_selftest IMAGE: what the backend needs from the image. Fails loudly.
image_selftest() {
    local image=${1:-$TRISSH_IMAGE} out rc
    local run=(run --rm --network none "$image")

    rc=0; out=$(pod "${run[@]}" sh -c 'echo hi; exit 3' 2>&1) || rc=$?
    [[ $out == hi && $rc == 3 ]] || { echo "selftest: sh -c 'echo hi; exit 3' gave rc=$rc out=$out" >&2; return 1; }

    # cat, head -c, sleep, kill, and the sftp-server answering SSH_FXP_INIT with SSH_FXP_VERSION (type 2).
    out=$(pod "${run[@]}" sh -c '
        set -e
        [ "$(echo abc | cat)" = abc ]
        [ "$(head -c 100000 /dev/zero | wc -c)" = 100000 ]
        sleep 2147483647 & pid=$!; kill -TERM $pid; rc=0; wait $pid 2>/dev/null || rc=$?; [ $rc = 143 ]
        # (stdin must stay open a moment: sftp-server exits on EOF before flushing its answer)
        { printf "\000\000\000\005\001\000\000\000\003"; sleep 0.3; } | /usr/lib/openssh/sftp-server | head -c 5 | od -An -tx1 | tr -d " \n"
    ' 2>&1) || { echo "selftest: tools check failed: $out" >&2; return 1; }
    [[ $out =~ ^[0-9a-f]{8}02$ ]] || { echo "selftest: sftp-server did not answer SSH_FXP_VERSION: $out" >&2; return 1; }

    # A pty nobody has sized yet is 0x0 and busybox `stty size` refuses that, so size it first
    # (trissh resizes the exec's tty from the client's pty-req before anything runs).
    out=$(pod run --rm -t --network none "$image" sh -c 'stty rows 24 cols 80 && stty size' </dev/null 2>&1) \
        || { echo "selftest: stty under a tty failed: $out" >&2; return 1; }
    [[ $out == $'24 80\r' || $out == '24 80' ]] || { echo "selftest: stty size printed: $out" >&2; return 1; }
}

# ---------------------------------------------------------------------------- Debian image
DEBIAN_SUITE=bookworm
DEBIAN_PACKAGES=bash,coreutils,git,rsync,openssh-client,python3,tmux,openssh-sftp-server,procps,less
# The static helper setup-host.sh builds; copied into the image as /usr/local/bin/trissh-exec
# (trissh bind-mounts the host's at /run/trissh-exec anyway; the copy serves other runtimes).
DEBIAN_HELPER=${TRISSH_EXEC_HELPER:-/usr/local/lib/trissh/trissh-exec}

debian_recipe_hash() {
    command -v mmdebstrap >/dev/null || { echo "build-image: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; return 1; }
    [[ -x $DEBIAN_HELPER ]] || { echo "build-image: $DEBIAN_HELPER is missing (scripts/setup-host.sh builds it)" >&2; return 1; }
    # Only what shapes this image: editing the busybox recipe must not rebuild it, nor a
    # new helper (trissh bind-mounts the host's over any copy; the image's is a convenience).
    { declare -f debian_tar debian_customize; echo "$DEBIAN_SUITE $DEBIAN_PACKAGES"
      dpkg-query -W -f='${Version}\n' mmdebstrap; } | sha256sum | cut -c1-32
}

# debian_customize ROOT: run by mmdebstrap inside its customize hook, ROOT is the new system.
debian_customize() {
    local root=$1
    # mmdebstrap's directory is 0555: root without CAP_DAC_OVERRIDE (trissh drops every
    # capability) could not create anything in /.
    chmod 0755 "$root"
    install -D -m 0755 "$DEBIAN_HELPER" "$root/usr/local/bin/trissh-exec"
    # No apt state nor logs in the image; a fixed machine id is none at all.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
        "$root"/var/log/apt/* "$root/etc/machine-id"
    : >"$root/etc/hostname"
    : >"$root/etc/resolv.conf"
}

# debian_tar OUT: the root filesystem as a tar archive (mmdebstrap writes it; "-" is stdout).
debian_tar() {
    local out=$1
    # root mode when root (plain chroot), else unshare (needs subuids for the caller).
    mmdebstrap --quiet --variant=apt --include="$DEBIAN_PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook="$(declare -f debian_customize); DEBIAN_HELPER='$DEBIAN_HELPER' debian_customize \"\$1\"" \
        "$DEBIAN_SUITE" "$out"
}

# debian_import [IMAGE]: build and import when missing or its recipe changed; prints
# "unchanged" or "built" on stdout.
debian_import() {
    local image=${1:-$TRISSH_DEBIAN_IMAGE} want have tar
    want=$(debian_recipe_hash)
    have=$(pod image inspect --format "{{index .Labels \"$TRISSH_RECIPE_LABEL\"}}" "$image" 2>/dev/null || true)
    if [[ $have == "$want" ]]; then
        echo unchanged
        return 0
    fi
    tar=$(mktemp /tmp/trissh-debian.XXXXXX.tar)
    # (a file, not a pipe: the podman user reads it, and a failed build imports nothing)
    if ! debian_tar "$tar" >&2; then
        rm -f "$tar"
        return 1
    fi
    chmod 0644 "$tar"
    pod import --quiet \
        --change 'CMD ["/bin/bash", "-l"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL $TRISSH_RECIPE_LABEL=$want" \
        --message "trissh Debian $DEBIAN_SUITE image ($DEBIAN_PACKAGES), recipe $want" \
        - "$image" <"$tar" >/dev/null || { rm -f "$tar"; return 1; }
    rm -f "$tar"
    pod image prune --force --filter "label=$TRISSH_RECIPE_LABEL" >/dev/null 2>&1 || true
    echo built
}

# debian_selftest [IMAGE]: the tools the tests and users rely on run, rootless, in the image.
debian_selftest() {
    local image=${1:-$TRISSH_DEBIAN_IMAGE} out
    out=$(pod run --rm --network none "$image" bash -c '
        set -e
        git --version >/dev/null
        rsync --version >/dev/null
        python3 -c "import ssl, json"
        tmux -V >/dev/null
        rc=0; ssh-add -l >/dev/null 2>&1 || rc=$?; [ $rc = 2 ]   # 2: no agent to ask
        test -x /usr/local/bin/trissh-exec
        { printf "\000\000\000\005\001\000\000\000\003"; sleep 0.3; } | /usr/lib/openssh/sftp-server | head -c 5 | od -An -tx1 | tr -d " \n"
    ' 2>&1) || { echo "selftest-debian: a tool failed: $out" >&2; return 1; }
    [[ $out =~ ^[0-9a-f]{8}02$ ]] || { echo "selftest-debian: sftp-server did not answer: $out" >&2; return 1; }
}

build_image_main() {
    case ${1:-} in
        hash) image_recipe_hash ;;
        tar) image_tar "${2:?usage: build-image.sh tar FILE|-}" ;;
        import) image_import "${2:-$TRISSH_IMAGE}" ;;
        import-bench) image_import "${2:-$TRISSH_BENCH_IMAGE}" bench ;;
        selftest) image_selftest "${2:-$TRISSH_IMAGE}" && echo "selftest ok" ;;
        import-debian) debian_import "${2:-$TRISSH_DEBIAN_IMAGE}" ;;
        selftest-debian) debian_selftest "${2:-$TRISSH_DEBIAN_IMAGE}" && echo "selftest ok" ;;
        hash-debian) debian_recipe_hash ;;
        *) sed -n '2,/^set -euo/p' "$BUILD_IMAGE_SH" | sed '$d; s/^# \{0,1\}//' >&2; return 2 ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    build_image_main "$@"
fi
