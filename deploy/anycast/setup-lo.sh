#!/bin/sh
# Puts the anycast service address on `lo` (idempotent), so the edge
# answers on it; whether traffic comes is BGP's business (bird.conf).
# Usage: setup-lo.sh 203.0.113.1        (the address in bird.conf's SERVICE)
# Run at boot before BIRD and isola-edge, e.g. from isola-healthcheck.service
# (ExecStartPre) or a oneshot unit.
set -eu
addr="${1:?usage: setup-lo.sh SERVICE_ADDRESS (e.g. 203.0.113.1)}"
case "$addr" in
  */*) echo "setup-lo.sh: give the address without a prefix length ($addr)" >&2; exit 2 ;;
esac
ip link set lo up
if ! ip -4 addr show dev lo | grep -q "inet $addr/32"; then
  ip addr add "$addr/32" dev lo
fi
# Answer ARP only for addresses on the interface asked, never for the
# service address on lo (it lives on every edge).
sysctl -q -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
