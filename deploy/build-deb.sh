#!/usr/bin/env bash
# Builds the Debian package from this tree:
#
#     deploy/build-deb.sh            -> build/deb/isthmus_<version>_amd64.deb
#
# (and its -dbgsym package), then runs lintian on it, which must find
# nothing above "info" beyond the overrides in deploy/debian/. Options:
#   --no-dbgsym    skip the debug symbols package (quicker; the CI test)
#   --no-lintian   skip lintian
# Environment: CCACHE_DIR (default: your ccache's cache), ISTHMUS_DEB_JOBS
# (default 2).
#
# The package is built from this tree (debian/ is a symbolic link to
# deploy/debian/ while it runs), compiled in build/pkg with CI's flags:
# after tests/run.sh, or a build/ci of your own, every object comes from
# ccache and the build is a link. Installs nothing; deploy/install-deps.sh
# brings what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

dbgsym=1
lintian=1
for arg in "$@"; do
  case $arg in
    --no-dbgsym) dbgsym=0 ;;
    --no-lintian) lintian=0 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

started=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - started) / 1000000 )); printf '%d.%01ds' $((ms / 1000)) $((ms % 1000 / 100)); }

version=$(sed -n 's/^project(isthmus VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
deb_version=$(dpkg-parsechangelog -l deploy/debian/changelog -S Version)
if [ "$version" != "$deb_version" ]; then
  echo "build-deb: CMakeLists.txt says $version, deploy/debian/changelog $deb_version" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)
out=$root/build/deb
rm -rf "$out"
mkdir -p "$out"
if [ -e debian ] && [ ! -L debian ]; then
  echo "build-deb: ./debian exists and is not our link to deploy/debian" >&2
  exit 1
fi
ln -sfn deploy/debian debian
cleanup() {
  # debhelper's own files (they land in deploy/debian/ through the link).
  debian/rules clean >/dev/null 2>&1 || true
  rm -f debian
}
trap cleanup EXIT

# debhelper 13 gives the build a HOME of its own: name the cache explicitly.
export CCACHE_DIR=${CCACHE_DIR:-$(ccache -k cache_dir)}
options="nocheck"
[ "$dbgsym" = 1 ] || options="$options noautodbgsym"
export DEB_BUILD_OPTIONS="$options parallel=${ISTHMUS_DEB_JOBS:-2}"
ccache_counts() {
  ccache --print-stats | awk -F'\t' '$1=="direct_cache_hit"||$1=="preprocessed_cache_hit"{h+=$2} $1=="cache_miss"{m+=$2} END{print h+0, m+0}'
}
read -r hits_before misses_before < <(ccache_counts)
echo "build-deb: building isthmus $version (CCACHE_DIR=$CCACHE_DIR)" >&2
nice -n 10 dpkg-buildpackage -b --no-sign \
    --buildinfo-file="$out/isthmus_${version}_${arch}.buildinfo" --buildinfo-option=-u"$out" \
    --changes-file="$out/isthmus_${version}_${arch}.changes" --changes-option=-u"$out" \
    > "$out/build.log" 2>&1 || {
  tail -40 "$out/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed; the whole log is $out/build.log" >&2
  exit 1
}
deb=$out/isthmus_${version}_${arch}.deb
# (Counted over the whole cache: a build running beside this one adds its own.)
read -r hits_after misses_after < <(ccache_counts)
hits="$((hits_after - hits_before)) hits, $((misses_after - misses_before)) misses"
echo "build-deb: $deb ($(du -k "$deb" | cut -f1) KiB) in $(elapsed); ccache: $hits" >&2

if [ "$lintian" = 1 ]; then
  # --fail-on warning: errors and warnings fail the build; every override
  # is in deploy/debian/isthmus.lintian-overrides with its reason.
  lintian --fail-on error,warning --info --display-info "$deb" >&2
  echo "build-deb: lintian clean after $(elapsed)" >&2
fi
echo "$deb"
