#!/usr/bin/env bash
# Install the system packages the test suite drives: DCMTK (echoscu, storescu,
# findscu, getscu, movescu, storescp, and dcmdjpeg / dcmdjpls / dcmdrle / dcmconv,
# reference decoders of the decode survey), GDCM's gdcmconv (libgdcm-tools: the
# survey's reference decode), OpenJPH's ojph_compress (openjph-tools: real HTJ2K
# code streams for the HTJ2K decode tests), Orthanc with its DICOMweb plugin (the
# peer archive of the migration tests and benchmarks) and a PostgreSQL server
# (the tests start a throw-away cluster from /usr/lib/postgresql/*/bin, see
# tests/pgcluster.py), nginx and systemd-analyze (tests/e2e/test_deploy_examples.py runs the
# examples of docs/deploy/ through them) and Debian's chromium (the browser tests of
# tests/browser/ drive it through Playwright: Playwright's own browser download is not
# used). Debian/Ubuntu; uses sudo when not root.
set -euo pipefail

need=()
for tool in echoscu storescu findscu getscu movescu storescp dcmdump dcmdjpeg dcmdjpls dcmdrle dcmconv \
  dcmprscp dcmprscu dcmpsprt; do
  [ -x "/usr/bin/$tool" ] || need=(dcmtk)
done
[ -x /usr/bin/gdcmconv ] || need+=(libgdcm-tools)
[ -x /usr/bin/ojph_compress ] || need+=(openjph-tools)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || ! command -v psql >/dev/null; then
  need+=(postgresql postgresql-client)
fi
[ -x /usr/sbin/nginx ] || need+=(nginx)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing ${need[*]} (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The prebuilt OHIF viewer (npm's @ohif/app) that tests/e2e/ui/test_ohif.py installs with
# `dicomhub ohif install --from-tarball` (the tests talk only to 127.0.0.1): fetched once.
OHIF_VERSION=3.13.2
OHIF_CACHE="${DICOMHUB_TEST_OHIF_DIR:-$HOME/.cache/dicomhub-test/ohif}"
if [ ! -f "$OHIF_CACHE/ohif-app-$OHIF_VERSION.tgz" ]; then
  mkdir -p "$OHIF_CACHE"
  npm pack --silent "@ohif/app@$OHIF_VERSION" --pack-destination "$OHIF_CACHE" >/dev/null
fi
