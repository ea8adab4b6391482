#!/usr/bin/env bash
# Checks that two builds of writeback make the same plans, byte for byte, apart from the plan id and the two
# times (which differ on every run): a speed change must not change what a plan says.
#
# usage: benches/same-plan.sh OLD_WRITEBACK NEW_WRITEBACK [DATA_DIR...]
#
# Plans the samples (both mappings, keep list, JSON and CSV, --add-only and --remove-only) with both binaries,
# then each DATA_DIR that holds contacts.csv, members.csv and users.csv (the floor's gen.py makes them), in JSON.
# The id and time lines are blanked with sed (not re-encoded, so any other byte difference shows), then compared
# with cmp. Exits 1 at the first difference. Needs ssh-keygen.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
old=$(realpath "$1")
new=$(realpath "$2")
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$repo/samples" "$work/samples"
chmod 600 "$work"/samples/keys/demo-*
ssh-keygen -q -t ed25519 -N '' -C bench@contoso.example -f "$work/key"
checked=0

# Blanks the lines that differ between two runs of the same plan: plan_id, created_at, expires_at (JSON and CSV).
strip() {
  sed -E -e 's/^(  "(plan_id|created_at|expires_at)": ).*$/\1-/' -e 's/^#(plan_id|created_at|expires_at),.*$/#\1,-/' "$1"
}

# same NAME FORMAT ARGS...: plans ARGS with both binaries (in $work, so paths in the plan are the same) and compares.
same() {
  local name=$1 format=$2
  shift 2
  for build in old new; do
    local bin=$old
    [ "$build" = new ] && bin=$new
    (cd "$work" && "$bin" plan "$@" --format "$format" --out "$build.$format" >/dev/null 2>"$build.stderr") || {
      echo "$name: $build failed:" >&2
      cat "$work/$build.stderr" >&2
      exit 1
    }
  done
  if ! cmp -s <(strip "$work/old.$format") <(strip "$work/new.$format"); then
    echo "DIFFERENT: $name ($format)" >&2
    diff <(strip "$work/old.$format") <(strip "$work/new.$format") | head -20 >&2
    exit 1
  fi
  if ! cmp -s "$work/old.stderr" "$work/new.stderr"; then
    echo "DIFFERENT warnings: $name" >&2
    diff "$work/old.stderr" "$work/new.stderr" >&2
    exit 1
  fi
  echo "same: $name ($format, $(wc -c <"$work/new.$format") bytes)"
  rm -f "$work"/old.* "$work"/new.*
  checked=$((checked + 1))
}

key=(--key samples/keys/demo-planner)
all_staff=(--contacts samples/politemail-all-staff.csv --members samples/entra-members-all-staff.csv
  --users samples/entra-users.csv --group b53a97e9-e214-49f9-9d7e-4e4a23c5c243)
managers=(--contacts samples/politemail-managers.csv --members samples/entra-members-managers.csv
  --users samples/entra-users.csv --group 4215fbad-0d2a-4fcf-bf8c-01ee7318e9cb --group-name Managers)
for format in json csv; do
  same "samples all staff + keep list" "$format" "${all_staff[@]}" --keep samples/keep.txt "${key[@]}"
  same "samples managers" "$format" "${managers[@]}" "${key[@]}"
done
same "samples all staff, --add-only" json "${all_staff[@]}" --add-only "${key[@]}"
same "samples all staff, --remove-only" json "${all_staff[@]}" --remove-only "${key[@]}"
same "samples, config with both mappings" json --config samples/writeback.toml "${key[@]}"

for dir in "$@"; do
  dir=$(realpath "$dir")
  ln -sfn "$dir" "$work/data"
  same "$(basename "$dir")" json --contacts data/contacts.csv --members data/members.csv --users data/users.csv \
    --group 00000000-0000-0000-0000-000000000001 --key key
done
echo "all $checked plans the same"
