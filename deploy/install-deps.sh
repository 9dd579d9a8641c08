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
  python3 python3-prometheus-client curl openssl procps iproute2
  haproxy
  postfix swaks
  slapd ldap-utils
  mariadb-server mariadb-client
)

want=("${build_packages[@]}" "${fuzz_packages[@]}" "${test_packages[@]}" "${package_packages[@]}")
missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
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
