#!/usr/bin/env bash
# What tests/deploy runs, on a CI machine (Debian, root): Debian's docker.io (a Docker daemon),
# debootstrap (the local base image: registry images cannot be pulled there), docker-compose,
# nginx and prometheus (for promtool), installed when missing; then dockerd, started when no
# daemon answers, and left running for later runs. It never fails CI: where something cannot
# be had (not root, no cgroups, no package mirror) it says why, and the tests that need it skip
# with their reason.
set -uo pipefail

say() { echo "docker-engine: $*" >&2; }
log=${CCNET_DOCKERD_LOG:-/var/log/ccnet-dockerd.log}

if [ "$(id -u)" -ne 0 ]; then
    say "not root: no packages installed, no dockerd started (the Docker tests will skip)"
    exit 0
fi

missing=()
for pair in dockerd:docker.io debootstrap:debootstrap docker-compose:docker-compose \
    nginx:nginx promtool:prometheus; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    # no service starts from the packages' scripts (nginx, prometheus): the tests start their own
    policy_rc=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy_rc" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod 0755 "$policy_rc" && added_policy=1
    fi
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"; } >&2 || say "apt-get failed: ${missing[*]} missing"
    if [ "$added_policy" -eq 1 ]; then rm -f "$policy_rc"; fi
fi

# The CLI packaged with dockerd: it builds with BuildKit without the buildx plugin.
docker_cli=/usr/bin/docker
[ -x "$docker_cli" ] || docker_cli=$(command -v docker || true)
if [ -z "$docker_cli" ] || ! command -v dockerd >/dev/null 2>&1; then
    say "no dockerd (docker.io not installed): the Docker tests will skip"
    exit 0
fi
if "$docker_cli" version >/dev/null 2>&1; then
    say "a Docker daemon already answers"
    exit 0
fi
if [ ! -d /sys/fs/cgroup ] || [ -z "$(ls -A /sys/fs/cgroup 2>/dev/null)" ]; then
    say "no cgroup file system at /sys/fs/cgroup: dockerd cannot run containers here"
    exit 0
fi
say "starting dockerd (log: $log)"
setsid dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
    if "$docker_cli" version >/dev/null 2>&1; then
        say "dockerd $("$docker_cli" version --format '{{.Server.Version}}') is up"
        exit 0
    fi
    if ! kill -0 "$!" 2>/dev/null; then
        break
    fi
    sleep 0.5
done
say "dockerd did not come up; the Docker tests will skip. Last lines of $log:"
tail -n 15 "$log" >&2
exit 0
