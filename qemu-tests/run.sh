#!/bin/sh
# Guest tests: boot real VMs under TCG through the daemon. Run by `make test`.
exec sh "$(dirname "$0")/../tests/sh/run.sh" "$(dirname "$0")"
