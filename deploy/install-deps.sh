#!/usr/bin/env bash
# The one list of Debian 12 packages Isthmus needs to build, test and run its demo.
# Installs only what is missing; safe to run again. Needs root (or sudo) when
# something is missing.
set -euo pipefail

build_packages=(
  build-essential cmake ninja-build ccache pkg-config
  libboost1.81-dev libssl-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libcli11-dev doctest-dev
  libldap-dev libmariadb-dev libcrypt-dev libicu-dev
)
# The Debian package (deploy/build-deb.sh) and its checks: debhelper and
# lintian; systemd-analyze for the units; man for the man pages; promtool
# (package prometheus: its server is not started, policy-rc.d below) for the
# alert rules.
package_packages=(
  debhelper dpkg-dev lintian systemd man-db prometheus
)
# The libFuzzer targets (tests/fuzz/, build/fuzz): clang and its runtime
# libraries (libFuzzer, ASan, UBSan).
fuzz_packages=(
  clang-14 libclang-rt-14-dev
)
test_packages=(
  dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-managesieved dovecot-sieve
  sieve-connect
  cyrus-common cyrus-admin cyrus-clients sasl2-bin
  python3 python3-prometheus-client curl openssl procps iproute2
  haproxy
  postfix swaks
  slapd ldap-utils
  mariadb-server mariadb-client
  # The libraries of exim4-daemon-light, which is extracted (below), not
  # installed: it conflicts with postfix (both are the system's MTA).
  libgnutls-dane0 libidn12 libnsl2 libpcre2-8-0 libdb5.3
)

want=("${build_packages[@]}" "${fuzz_packages[@]}" "${test_packages[@]}" "${package_packages[@]}")
missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# Node binaries that cannot be installed beside what is above, unpacked into
# the project's own directory instead (tests/lab/nodebin.py finds them;
# ISTHMUS_NODE_BIN overrides the place):
#   cyrus-imapd, cyrus-pop3d  conflict with dovecot-imapd/-pop3d (both are
#                      the system's imap-server/pop3-server); their imapd and
#                      pop3d run with cyrus-common's libraries
#   exim4-daemon-light conflicts with postfix (mail-transport-agent): the
#                      CalMail test runs a private Exim from here
# `apt-get download` + `dpkg -x`, the versions matching what is installed,
# redone only when the installed cyrus-common changes. Idempotent.
node_bin=${ISTHMUS_NODE_BIN:-$(cd "$(dirname "$0")/.." && pwd)/build/node-bin}
extract_node_binaries() {
  local cyrus_version stamp tmp
  cyrus_version=$(dpkg-query -W -f='${Version}' cyrus-common)
  stamp="cyrus-imapd=$cyrus_version cyrus-pop3d=$cyrus_version exim4-daemon-light"
  if [ -x "$node_bin/usr/lib/cyrus/bin/imapd" ] && [ -x "$node_bin/usr/sbin/exim4" ] &&
     [ "$(cat "$node_bin/.versions" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  echo "install-deps: extracting cyrus-imapd, cyrus-pop3d, exim4-daemon-light into $node_bin" >&2
  tmp=$(mktemp -d)
  chmod 0755 "$tmp"  # apt's download user (_apt) writes into it
  # shellcheck disable=SC2086 # the stamp is the package list
  if ! (cd "$tmp" && apt-get download $stamp >&2); then
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update >&2
    (cd "$tmp" && apt-get download $stamp >&2)
  fi
  rm -rf "$node_bin.new"
  mkdir -p "$node_bin.new"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$node_bin.new"; done
  rm -rf "$tmp"
  for exe in usr/lib/cyrus/bin/imapd usr/lib/cyrus/bin/pop3d usr/sbin/exim4; do
    if ldd "$node_bin.new/$exe" | grep -q 'not found'; then
      echo "install-deps: $exe misses libraries:" >&2
      ldd "$node_bin.new/$exe" | grep 'not found' >&2
      return 1
    fi
  done
  echo "$stamp" >"$node_bin.new/.versions"
  rm -rf "$node_bin"
  mv "$node_bin.new" "$node_bin"
  # Cyrus' master runs its services as the cyrus user: the tree must be
  # readable and executable by it.
  chmod -R a+rX "$node_bin"
}
# The unpacked Exim runs as Debian-exim, the system user exim4-base's
# postinst makes when the package is installed (it is not here): made the
# same way if missing.
ensure_exim_user() {
  getent passwd Debian-exim >/dev/null && return 0
  echo "install-deps: adding the system user Debian-exim (the unpacked Exim runs as it)" >&2
  "${sudo[@]}" useradd --system --user-group --badname --home-dir /var/spool/exim4 \
    --no-create-home --shell /usr/sbin/nologin Debian-exim
}
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
if [ ${#missing[@]} -eq 0 ]; then
  extract_node_binaries
  ensure_exim_user
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive

# Keep package installs from starting system-wide daemons on the standard ports
# (dovecot on 143/110): the tests and the demo start their own instances.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo[@]}" chmod 0755 /usr/sbin/policy-rc.d
  trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
fi

# postfix asks which kind of mail server this is: "No configuration" writes
# no /etc/postfix/main.cf and sets up nothing system-wide (the tests run
# private instances, tests/lab/postfix.py). Preseeded so the question is
# never asked, whatever DEBIAN_FRONTEND says.
if printf '%s\n' "${missing[@]}" | grep -qx postfix; then
  printf '%s\n' \
    'postfix postfix/main_mailer_type select No configuration' \
    'postfix postfix/mailname string localhost' |
    "${sudo[@]}" debconf-set-selections
fi

# slapd asks for a domain and an admin password, then builds a system-wide
# database in /etc/ldap/slapd.d. "Omit OpenLDAP server configuration" skips
# all of that: the tests run private instances (tests/lab/slapd.py) from a
# slapd.conf of their own. mariadb-server asks nothing; its system instance
# is not started (policy-rc.d above) and the tests run their own
# (tests/lab/mariadb.py, --no-defaults).
if printf '%s\n' "${missing[@]}" | grep -qx slapd; then
  printf '%s\n' \
    'slapd slapd/no_configuration boolean true' |
    "${sudo[@]}" debconf-set-selections
fi

apt_install() {
  # Another apt/dpkg run may hold the lock for a while: wait for it.
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$@"
}
if ! apt_install "${missing[@]}"; then
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update
  apt_install "${missing[@]}"
fi
extract_node_binaries
ensure_exim_user
