#!/usr/bin/env bash
# Datum batching from a shell script, written exactly as for Pachyderm:
# `pachctl next datum` finishes the current datum and returns once the next
# one is in /pfs; /pfs/.env holds that datum's variables.
set -euo pipefail

while pachctl next datum; do
  source /pfs/.env
  name=$(basename "$texts")
  words=$(wc -w < "$texts")
  echo "$name: $words words"
  echo "$words" > "/pfs/out/$name.count"
done
