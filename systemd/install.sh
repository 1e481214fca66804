#!/bin/sh
# Install echoes as a systemd service from this checkout: a virtualenv in /opt/echoes, the
# configuration in /etc/echoes (kept if it exists), the unit in /etc/systemd/system.
# Run as root. With ROOT=/some/dir everything goes under that directory and systemctl is not
# called (the test suite installs this way: tests/test_operations.py).
set -eu
root=${ROOT:-}
src=$(cd "$(dirname "$0")/.." && pwd)

python3 -m venv "$root/opt/echoes"
"$root/opt/echoes/bin/pip" install --quiet "$src"
install -m 644 "$src/README.md" "$root/opt/echoes/README.md"
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

if [ -z "$root" ]; then
  systemctl daemon-reload
  systemctl enable --now echoes.service
  systemctl --no-pager status echoes.service
fi
