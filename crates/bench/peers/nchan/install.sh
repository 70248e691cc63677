#!/bin/sh
# Installs nginx and the Nchan module from Debian's packages, for `switchboard-bench fanout`.
# Does nothing when both are there. Needs root (apt-get); the bench runs nginx itself, in the
# foreground with its own config, so a packaged nginx service is neither needed nor started here.
set -eu
if command -v nginx >/dev/null 2>&1 && ls /usr/lib/nginx/modules/ngx_nchan_module.so >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan
