#!/usr/bin/env bash
# Create .venv-peers with the keyword spotters kwstream is measured against: the microWakeWord
# models inside pymicro-wakeword, openWakeWord 0.4.0 (the last release whose wheel still
# contains its models, which later releases download at run time), and pocketsphinx, whose
# wheel ships an English acoustic model for keyphrase search.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[[ -x .venv-peers/bin/python ]] || "$PYTHON" -m venv .venv-peers
.venv-peers/bin/python -m pip install -q "pymicro-wakeword==2.5.0" "openwakeword==0.4.0" "pocketsphinx==5.1.1" \
    "onnxruntime" "soundfile" "numpy"
