#!/usr/bin/env bash
# A remote manager across two hosts: the manager_remote example serves on h1 (10.99.0.1) and
# its client runs on h2 (10.99.0.2), whose four children each connect to the server over TCP
# through the veth link and add to one entry with `modify`; the count must be exact and the
# server must stop when the client asks. Needs root and iproute2 (network namespaces of
# ../shared/cluster/hosts.sh); removes the namespaces however it ends.
#
#   manager-two-hosts.sh BINARY      BINARY: a built manager_remote example
set -euo pipefail
bin=$(realpath "$1")
hosts=$(cd "$(dirname "$0")/.." && pwd)/../shared/cluster/hosts.sh
[ -x "$hosts" ] || hosts=/work/shared/cluster/hosts.sh
if [ "$(id -u)" -ne 0 ] || ! ip netns list >/dev/null 2>&1; then
  echo "manager-two-hosts: skipped: needs root and 'ip netns'"
  exit 0
fi
if ip netns list | grep -qE '^(h1|h2)( |$)'; then
  # hosts.sh up would delete them under whoever made them.
  echo "manager-two-hosts: namespaces h1/h2 exist already (another run uses them); not touching them" >&2
  exit 1
fi
out=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  "$hosts" down
  rm -rf "$out"
}
rsh=$("$hosts" up)
trap cleanup EXIT
key=two-hosts-$RANDOM$RANDOM
"$rsh" 10.99.0.1 "timeout 120 $bin serve 10.99.0.1:47651 $key" >"$out/server" 2>&1 &
server=$!
for _ in $(seq 100); do
  grep -q "serving on" "$out/server" && break
  sleep 0.1
done
grep -q "serving on" "$out/server" || { echo "server did not start:"; cat "$out/server"; exit 1; }
client=$("$rsh" 10.99.0.2 "timeout 120 $bin client 10.99.0.1:47651 $key" 2>&1) \
  || { echo "$client"; cat "$out/server"; exit 1; }
echo "$client"
echo "$client" | grep -q "manager-remote: ok" || exit 1
# The client asked the server to stop: it must exit by itself.
for _ in $(seq 100); do
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$server" 2>/dev/null; then echo "server did not stop"; exit 1; fi
wait "$server" || { echo "server failed:"; cat "$out/server"; exit 1; }
server=
grep -q "server stopped" "$out/server" || { cat "$out/server"; exit 1; }
echo "manager-two-hosts: ok (server on h1, client and its children on h2)"
