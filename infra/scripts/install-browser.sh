#!/usr/bin/env bash
# Headless Chromium and chromedriver for tests/test_web.py: Debian's chromium and chromium-driver,
# installed with apt-get only when missing (as root, or with sudo when there is one).
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null; then
    SUDO="sudo"
else
    echo "install-browser.sh: chromium and chromium-driver are missing and this user cannot install them;" \
         "install them (apt-get install chromium chromium-driver) for the browser test" >&2
    exit 1
fi
echo "installing chromium and chromium-driver (apt-get) for the browser test"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
