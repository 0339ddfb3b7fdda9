#!/bin/sh
# `make run`: what a user of the freshly built binary does first.
set -eu
exec build/kvmbox --help
