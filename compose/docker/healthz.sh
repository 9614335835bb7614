#!/bin/bash
# Health probe of a mesh container: GET <path> (default /healthz) on the port of this
# container's HTTP_ADDR, exit 0 on a 200.
#
# Pure bash (its /dev/tcp redirection and the `read` builtin): debian:bookworm-slim has
# bash but neither curl nor wget, and the service binaries speak no client HTTP. Adding
# nothing to the image keeps it small and gives an attacker no HTTP client inside.
set -u
path="${1:-/healthz}"
addr="${HTTP_ADDR:-0.0.0.0:8080}"
port="${addr##*:}"
if ! exec 3<>"/dev/tcp/127.0.0.1/${port}"; then
    echo "healthz: nothing listens on port ${port}" >&2
    exit 1
fi
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
status=""
IFS= read -r -t 5 status <&3 || true
exec 3<&-
status="${status%$'\r'}"
version="${status%% *}"
code="${status#* }"
code="${code%% *}"
if [[ "${version:-}" == HTTP/1.? && "${code:-}" == 200 ]]; then
    exit 0
fi
echo "healthz: GET ${path} on port ${port} answered: ${status:-nothing}" >&2
exit 1
