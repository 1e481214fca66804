#!/bin/sh
# Install echoes as a systemd service from this checkout: a virtualenv in /opt/echoes, the
# configuration in /etc/echoes (kept if it exists), the unit in /etc/systemd/system.
# Run as root. With ROOT=/some/dir everything goes under that directory and systemctl is not
# called, unless SYSTEMCTL names a stand-in for it (the test suite installs this way:
# tests/test_operations.py).
#
# echoes is started only once /etc/echoes/redis_url holds a password: conf/redis.conf leaves
# no user without one, and an echoes that Redis refuses is never ready (Type=notify), so
# systemctl would wait out its start timeout. Until then this says what to do next.
set -eu
root=${ROOT:-}
src=$(cd "$(dirname "$0")/.." && pwd)
systemctl=${SYSTEMCTL:-systemctl}

python3 -m venv "$root/opt/echoes"
"$root/opt/echoes/bin/pip" install --quiet "$src"
install -m 644 "$src/README.md" "$root/opt/echoes/README.md"
install -d -m 755 "$root/opt/echoes/docs"
install -m 644 "$src"/docs/*.md "$root/opt/echoes/docs/"
install -d -m 755 "$root/etc/echoes" "$root/etc/systemd/system"
if [ ! -e "$root/etc/echoes/echoes.conf" ]; then
  install -m 644 "$src/conf/echoes.conf" "$root/etc/echoes/echoes.conf"
fi
# The Redis URL holds its password: a file only root reads, which the unit passes to the
# service as a credential (LoadCredential=redis_url:...), so it works with DynamicUser.
if [ ! -e "$root/etc/echoes/redis_url" ]; then
  (umask 077 && echo "redis://127.0.0.1:6379/0" > "$root/etc/echoes/redis_url")
fi
chmod 600 "$root/etc/echoes/redis_url"
install -m 644 "$src/systemd/echoes.service" "$root/etc/systemd/system/echoes.service"

if [ -n "$root" ] && [ -z "${SYSTEMCTL:-}" ]; then
  exit 0
fi
$systemctl daemon-reload
# A password in the URL: user:password@ or :password@ before the host.
if grep -Eq '^[a-z+]+://[^/@]*:[^/@]+@' "$root/etc/echoes/redis_url"; then
  $systemctl enable echoes.service
  # An upgrade restarts the running echoes; without waiting for it to be ready (see above).
  $systemctl restart --no-block echoes.service
  echo "echoes is starting: systemctl status echoes; journalctl -u echoes"
else
  echo "echoes is installed, not started: /etc/echoes/redis_url holds no password yet. Write" \
    "the URL of Redis's echoes user there, load echoes' function library, then" \
    "systemctl enable --now echoes (README.md, \"Deploy on a VM\", step 2)."
fi
