#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine; does nothing when it is
# all there already. Rust (cargo) and Python 3 are expected on the machine. (The
# benchmark's peers, Postfix and Dovecot, are installed by
# tools/bench/peers/peers-setup.sh when tools/bench/compare.sh first runs.)
set -euo pipefail

packages=()
command -v swaks >/dev/null 2>&1 || packages+=(swaks)
command -v fetchmail >/dev/null 2>&1 || packages+=(fetchmail)
command -v iptables >/dev/null 2>&1 || packages+=(iptables)
command -v ip >/dev/null 2>&1 || packages+=(iproute2)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
# Postfix is the far side of cm-relay's delivery test (crates/relay/tests/postfix.rs),
# which starts its own instance; "No configuration" keeps Debian from setting up the
# system's own mail service.
[ -x /usr/sbin/postfix ] || packages+=(postfix)
# swaks --tls needs Net::SSLeay, which swaks only recommends.
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || packages+=(libnet-ssleay-perl)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

python3 -c 'import pytest' 2>/dev/null || python3 -m pip install --quiet 'pytest>=7,<9'
# tests/test_metrics.py reads /metrics with the Prometheus reference client's parser.
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install --quiet 'prometheus-client>=0.16,<1'
# tests/test_deploy.py reads deploy/prometheus.yml.
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet 'pyyaml>=6,<7'
