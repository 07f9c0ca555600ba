#!/usr/bin/env sh
# The seed's launcher: ./server.sh -mode AMS -nobackground -profile haprofile1/primary
# Runs `tandem server` with the same flags, from the project's venv when there is one.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$here/.venv/bin/tandem" ]; then exec "$here/.venv/bin/tandem" server "$@"; fi
exec tandem server "$@"
