#!/usr/bin/env bash
# Runs cluster-selftest across two hosts: network namespaces h1 (10.99.0.1, rank 0) and h2
# (10.99.0.2, ranks 1 and 2, so every task and every injected crash is on the remote host),
# joined by a veth link, with MPI over TCP between them. Needs root and iproute2; removes the
# namespaces however it ends.
#
#   two-hosts.sh BINARY [ARGS...]     BINARY: a built cluster-selftest
set -euo pipefail
bin=$(realpath "$1"); shift
hosts=$(cd "$(dirname "$0")/../.." && pwd)/../shared/cluster/hosts.sh
[ -x "$hosts" ] || hosts=/work/shared/cluster/hosts.sh
if ip netns list | grep -qE '^(h1|h2)( |$)'; then
  # hosts.sh up would delete them under whoever made them.
  echo "two-hosts: namespaces h1/h2 exist already (another run uses them); not touching them" >&2
  exit 1
fi
rsh=$("$hosts" up)
trap '"$hosts" down' EXIT
env="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 RUST_BACKTRACE=0"
out=$("$rsh" 10.99.0.1 "$env mpirun --timeout 150 --mca plm_rsh_agent $rsh \
  --mca oob_tcp_if_include 10.99.0.0/24 --mca btl_tcp_if_include 10.99.0.0/24 \
  --host 10.99.0.1:1,10.99.0.2:2 -n 3 $bin $*" 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep "cluster-selftest: ok" | grep -F "hosts [\"h1\", \"h2\", \"h2\"]" || { echo "$out"; exit 1; }
