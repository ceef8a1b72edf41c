#!/usr/bin/env bash
# Installs the real peers the test suite talks to: DCMTK, Orthanc with its
# DICOMweb plugin, PostgreSQL and dicom3tools (dciodvfy); Chromium and npm for
# the browser tests of the UI. Only as root and
# only when something is missing, so repeated `make test` runs stay fast.
set -euo pipefail
need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc  >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v curl     >/dev/null 2>&1 || need+=(curl)  # make bench's WADO-RS client
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the UI's browser tests (Playwright)
command -v npm      >/dev/null 2>&1 || need+=(npm)  # fetches OHIF (npm pack @ohif/app) for its test
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "pacsnode tests want these Debian packages: ${need[*]} (not root: skipping install;" \
       "tests needing them will skip, or fail under CI=true)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged services on install; the tests run their own.
for svc in orthanc postgresql; do
  (command -v systemctl >/dev/null && systemctl stop "$svc") >/dev/null 2>&1 || true
  (service "$svc" stop) >/dev/null 2>&1 || true
done
echo "installed: ${need[*]}"
