#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the samples (and a plan, signatures and approvals made from them).
# Usage: fuzz/seed.sh   (from anywhere; needs a built writeback: cargo build)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
corpus="$root/fuzz/corpus"
bin="$root/target/debug/writeback"
[ -x "$bin" ] || (cd "$root" && cargo build --quiet)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$root/samples/." "$work/"
chmod 600 "$work"/keys/demo-*
(cd "$work" \
  && "$bin" plan --config writeback.toml --out plan.json >/dev/null \
  && "$bin" plan --config writeback.toml --format csv --out plan.csv >/dev/null \
  && "$bin" approve plan.json --key keys/demo-approver --config writeback.toml >/dev/null)
mkdir -p "$corpus"/{plan_decode,sshsig,allowed_signers,politemail_csv,entra_members,entra_users}
cp "$work/plan.json" "$work/plan.csv" "$corpus/plan_decode/"
cp "$work/plan.json.sig" "$work/plan.csv.sig" "$work"/plan.json.approval-*.sig "$corpus/sshsig/"
cp "$root/samples/keys/allowed_signers" "$corpus/allowed_signers/"
for f in "$root"/samples/keys/*.pub; do cp "$f" "$corpus/allowed_signers/"; done
cp "$root"/samples/politemail-*.csv "$corpus/politemail_csv/"
cp "$root"/samples/entra-members-*.csv "$corpus/entra_members/"
cp "$root/samples/entra-users.csv" "$corpus/entra_users/"
echo "seeded $(find "$corpus" -type f | wc -l) files under $corpus"
