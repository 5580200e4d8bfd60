#!/usr/bin/env bash
# README command 1: EAM copper data -> Allegro training -> .pt2 export -> LAMMPS NVE MD, with accuracy and speed.
set -eo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec vivace demo "$@"
