#!/usr/bin/env bash
# Prepare a fresh Debian bookworm machine (or Raspberry Pi OS) for kwstream development:
# the system packages that the tests and the demo use, and a virtual environment in .venv
# with kwstream installed in editable mode. Safe to run again; it installs only what is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

APT_PACKAGES=(
    ffmpeg sox libsndfile1 libportaudio2 alsa-utils   # decoding, resampling, audio devices
    espeak-ng flite festival festvox-kallpc16k        # offline speech synthesis for training
    festvox-kdlpc16k festvox-us-slt-hts
    asterisk-core-sounds-en-g722                      # real human speech for evaluation
    asterisk-core-sounds-en                           # the sounds/en link and transcripts
    asterisk-moh-opsound-g722                         # music backgrounds for augmentation
    mosquitto mosquitto-clients                       # MQTT broker for integration tests
    prometheus                                        # Prometheus server and promtool
    wamerican                                         # English word list for the _unknown_ class
)
# Voices and speech for training. mbrola and pico come from Debian's contrib and non-free
# components. mbrola gives US and British English voices, and German, French, Dutch,
# Afrikaans, Greek, Hungarian, Polish, Romanian and Swedish voices that read English with an
# accent (all spoken through espeak-ng). festival adds British diphone voices and front ends
# for mbrola's English voices. The Asterisk packages are recorded French, Italian and Russian
# prompts: real speech without English keywords. klettres-data and ktuberling-data hold real
# speakers saying letter names (English and sixteen other languages) and English words.
VOICE_PACKAGES=(mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 mbrola-de1 mbrola-de2
                mbrola-de3 mbrola-de4 mbrola-de5 mbrola-de6 mbrola-fr1 mbrola-fr4 mbrola-nl2
                mbrola-af1 mbrola-gr2 mbrola-hu1 mbrola-pl1 mbrola-ro1 mbrola-sw1 mbrola-sw2
                festvox-rablpc16k festvox-don festvox-us1 festvox-us2 festvox-en1
                libttspico-utils
                asterisk-core-sounds-fr-g722 asterisk-core-sounds-it-g722
                asterisk-core-sounds-ru-g722 asterisk-prompt-fr-armelle
                klettres-data ktuberling-data
)
NONFREE_SOURCES=/etc/apt/sources.list.d/kwstream-contrib-non-free.sources
# NOTE: the sources file is written for Debian and was run only on bookworm. Raspberry Pi OS
# lists its own sources, and the Pi needs these voices only for training.
PYTHON=${PYTHON:-python3.11}
EXTRAS=${KWSTREAM_EXTRAS:-test,train}

missing=()
for package in "${APT_PACKAGES[@]}" "${VOICE_PACKAGES[@]}"; do
    [[ $package == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
        echo "bootstrap: run as root or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}" >&2
    if [[ -z $(apt-cache policy libttspico-utils 2>/dev/null | grep -v '(none)' | grep Candidate) ]]
    then
        # shellcheck disable=SC1091
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
        echo "bootstrap: enabling Debian's contrib and non-free components in $NONFREE_SOURCES" >&2
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\n%s\n%s\n' \
            "$codename" "$codename" "Components: contrib non-free" \
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" > "$NONFREE_SOURCES"
    fi
    apt-get update -q
    # The mosquitto and prometheus packages would start system-wide services; the tests start
    # their own instances on loopback, so keep the package scripts from starting daemons.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    rm -f /usr/sbin/policy-rc.d
fi

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
echo "bootstrap: ready (.venv with kwstream[${EXTRAS}])" >&2
