#!/usr/bin/env bash
# A venv with SambaNova's generative_data_prep, for the differential check and the speed comparison only
# (never in the project's lock). Usage: bash benchmarks/setup_gdp_venv.sh /path/to/generative_data_prep
set -euo pipefail
SRC="${1:?give the path of a generative_data_prep checkout (github.com/sambanova/generative_data_prep)}"
VENV="$(cd "$(dirname "$0")" && pwd)/.gdp_venv"
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q "torch>=2.3"
SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0 "$VENV/bin/pip" install -q -e "$SRC"
echo "gdp venv ready: $VENV/bin/python -m generative_data_prep --help"
