#!/usr/bin/env bash
# The per-datum loop as a Pachyderm shell pipeline: `pachctl next datum`, `source /pfs/.env`.
# It reads its file and writes one output without forking (bash builtins only), so what is
# measured is pachctl and pfsmount, not cat. Like workload.handle_datum, the output holds the
# moment the datum was done, which is how the driver times the loop.
set -u
while pachctl next datum; do
  source /pfs/.env
  content=""
  IFS= read -r -d '' content < "$files" || true
  printf '%s %s\n' "${#content}" "$EPOCHREALTIME" > "/pfs/out/${files##*/}.len"
done
