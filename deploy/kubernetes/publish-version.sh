#!/usr/bin/env bash
# Publishes one exported version (a folder the trainer wrote, e.g. models/bertbc/3) to a bucket so that
# serving never loads it half-uploaded:
#   deploy/kubernetes/publish-version.sh models/bertbc/3 s3://my-bertbc-models/bertbc
#   deploy/kubernetes/publish-version.sh models/bertbc/3 gs://my-bertbc-models/bertbc
# Both write a marker, bertbc-published.txt ("<bytes> <path>" per file), last.
# s3: the overlays/s3 sidecar publishes a version only once the marker is there and every file it lists
#   has arrived with that size, so uploading the files and then the marker is enough.
# gs: TF Serving reads gs:// itself and tries a version as soon as its first object appears, retrying a
#   failed load only 5 times a minute apart. The files go to a staging prefix outside the base path
#   (<base>.staging/N, never scanned), then are copied inside the bucket (server-side, seconds) into N/
#   with saved_model.pb last: the version is visible but incomplete for seconds, not for the whole upload.
# Needs `aws` (AWS CLI v2) or `gcloud` with credentials that can write the bucket.
set -euo pipefail

marker=bertbc-published.txt
die() { echo "publish-version: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: $0 <version folder, e.g. models/bertbc/3> <s3://bucket/prefix or gs://bucket/prefix>"
version_dir="${1%/}"
base="${2%/}"
n="${version_dir##*/}"
[[ "${n}" =~ ^[0-9]+$ ]] || die "${version_dir}: the folder name must be the version number"
[ -f "${version_dir}/saved_model.pb" ] || die "${version_dir}: no saved_model.pb (not an exported version)"

manifest=$(mktemp)
trap 'rm -f "${manifest}"' EXIT
(cd "${version_dir}" && find . -type f ! -name "${marker}" | LC_ALL=C sort | while IFS= read -r file; do
  printf '%s %s\n' "$(wc -c < "${file}" | tr -d ' ')" "${file#./}"
done) > "${manifest}"

case "${base}" in
  s3://*)
    aws s3 sync --only-show-errors --exclude "${marker}" "${version_dir}" "${base}/${n}"
    aws s3 cp --only-show-errors "${manifest}" "${base}/${n}/${marker}"
    ;;
  gs://*)
    staging="${base}.staging/${n}"
    gcloud storage rsync --recursive --delete-unmatched-destination-objects "${version_dir}" "${staging}"
    gcloud storage cp "${manifest}" "${staging}/${marker}"
    gcloud storage rsync --recursive --exclude='^saved_model\.pb$' "${staging}" "${base}/${n}"
    gcloud storage cp "${staging}/saved_model.pb" "${base}/${n}/saved_model.pb"
    gcloud storage rm --recursive "${staging}"
    ;;
  *)
    die "${base}: expected an s3:// or gs:// prefix"
    ;;
esac
echo "publish-version: version ${n} published to ${base}/${n}"
