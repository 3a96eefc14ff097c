#!/usr/bin/env bash
# Install the kwstream daemon on Raspberry Pi OS bookworm (aarch64), or on any Debian with
# systemd and Python 3.11:
#   - kwstream with the "mic" extra in its own virtual environment, /opt/kwstream/venv;
#   - the system user kwstream, member of the audio group;
#   - /etc/kwstream/config.toml from deploy/config.example.toml, with the metrics endpoint on
#     127.0.0.1:9108, and /etc/kwstream/kwstream.env for KWSTREAM_MQTT_PASSWORD, both only
#     when absent, so a reinstall keeps local changes;
#   - deploy/systemd/kwstream.service as /etc/systemd/system/kwstream.service, enabled.
# Run it again to upgrade: it reinstalls the package and restarts a running service.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: deploy/install-pi.sh [--dry-run] [--root DIR] PACKAGE

PACKAGE      a kwstream wheel (kwstream-*.whl) or a kwstream source directory
--root DIR   write the files under DIR instead of / (a staging tree, like DESTDIR). Commands
             that change the system (apt-get, useradd, chown, pip, systemctl) are printed,
             not run.
--dry-run    print what would be written and run, and change nothing
-h, --help   show this help
USAGE
}

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV_DIR=/opt/kwstream/venv
CONFIG_DIR=/etc/kwstream
UNIT_PATH=/etc/systemd/system/kwstream.service
STATE_DIR=/var/lib/kwstream
SERVICE_USER=kwstream
METRICS_PORT=9108
# python3-venv for the virtual environment; libportaudio2 because the sounddevice wheel
# loads the system's PortAudio on Linux.
APT_PACKAGES=(python3 python3-venv libportaudio2)

root=/
dry_run=0
package=""
while (($#)); do
    case $1 in
        --dry-run) dry_run=1 ;;
        --root)
            [[ $# -ge 2 ]] || { echo "install-pi: --root needs a directory" >&2; exit 2; }
            root=$2
            shift
            ;;
        --root=*) root=${1#--root=} ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "install-pi: unknown option $1" >&2; usage >&2; exit 2 ;;
        *)
            [[ -z $package ]] || { echo "install-pi: more than one PACKAGE: $package, $1" >&2; exit 2; }
            package=$1
            ;;
    esac
    shift
done

if [[ -z $package ]]; then
    echo "install-pi: missing PACKAGE (a kwstream wheel or source directory)" >&2
    usage >&2
    exit 2
fi
if [[ -f $package && $package == *.whl ]]; then
    package=$(cd "$(dirname "$package")" && pwd)/$(basename "$package")
elif [[ -d $package && -f $package/pyproject.toml ]]; then
    package=$(cd "$package" && pwd)
else
    echo "install-pi: $package is neither a .whl file nor a directory with pyproject.toml" >&2
    exit 2
fi
if [[ $root != / ]]; then
    if [[ ! -d $root ]]; then
        echo "install-pi: --root $root: directory not found" >&2
        exit 2
    fi
    root=$(cd "$root" && pwd)
fi

# Commands are printed instead of run under --dry-run and in a staging tree, where
# installing packages or creating users would change the machine running the script.
print_only=0
if ((dry_run)) || [[ $root != / ]]; then
    print_only=1
fi
if ((!print_only)) && [[ $(id -u) -ne 0 ]]; then
    echo "install-pi: run as root (sudo $0 ...), or try --dry-run first" >&2
    exit 1
fi

# Run a command that changes the system, or print it.
run() {
    if ((print_only)); then
        printf 'would run:'
    else
        printf 'running:'
    fi
    printf ' %q' "$@"
    printf '\n'
    if ((!print_only)); then
        "$@"
    fi
}

# Write standard input to ROOT/PATH with MODE. With KEEP=1, leave an existing file alone.
write_file() {
    local mode=$1 path=$2 keep=$3
    local target=${root%/}$path
    if ((keep)) && [[ -e $target ]]; then
        echo "keeping existing $target"
        cat >/dev/null
        return
    fi
    if ((dry_run)); then
        echo "would write $target (mode $mode)"
        cat >/dev/null
        return
    fi
    echo "writing $target (mode $mode)"
    mkdir -p "$(dirname "$target")"
    # Create the file with its final mode, so a secret is never readable by others.
    local temporary
    temporary=$(mktemp "$target.XXXXXX")
    chmod "$mode" "$temporary"
    cat >"$temporary"
    mv -f "$temporary" "$target"
}

make_directory() {
    local mode=$1 path=$2
    local target=${root%/}$path
    if ((dry_run)); then
        echo "would create directory $target (mode $mode)"
        return
    fi
    echo "creating directory $target (mode $mode)"
    install -d -m "$mode" "$target"
}

# The example with the metrics endpoint switched on, so Prometheus can scrape it.
installed_config() {
    if ! grep -q "^# port = $METRICS_PORT\$" "$DEPLOY_DIR/config.example.toml"; then
        echo "install-pi: $DEPLOY_DIR/config.example.toml has no '# port = $METRICS_PORT' line" >&2
        exit 1
    fi
    sed "s/^# port = $METRICS_PORT\$/port = $METRICS_PORT/" "$DEPLOY_DIR/config.example.toml"
}

environment_file() {
    cat <<'ENV'
# Environment of kwstream.service. systemd reads this file as root, so keep it mode 0600.
# Password of the MQTT user named in [mqtt] url of /etc/kwstream/config.toml; the
# [mqtt] password_file key is the other way to give it.
#KWSTREAM_MQTT_PASSWORD=
ENV
}

echo "install-pi: installing $package, files under $root"

# 1. System packages.
missing=()
for name in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$name")
done
if ((${#missing[@]})); then
    run apt-get install -y --no-install-recommends "${missing[@]}"
fi

# 2. The service user. The audio group gives it the ALSA devices.
if getent passwd "$SERVICE_USER" >/dev/null; then
    run usermod --append --groups audio "$SERVICE_USER"
else
    run useradd --system --user-group --groups audio --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "kwstream keyword spotting daemon" "$SERVICE_USER"
fi

# 3. The virtual environment. The second pip call replaces an installed kwstream of the same
# version, which pip would otherwise keep.
if ((print_only)) || [[ ! -x $VENV_DIR/bin/python ]]; then
    run python3 -m venv "$VENV_DIR"
fi
run "$VENV_DIR/bin/python" -m pip install --upgrade "${package}[mic]"
run "$VENV_DIR/bin/python" -m pip install --force-reinstall --no-deps "$package"
run "$VENV_DIR/bin/kwstream" --version

# 4. Configuration: readable by the service, writable by root only.
make_directory 0750 "$CONFIG_DIR"
run chown "root:$SERVICE_USER" "$CONFIG_DIR"
installed_config | write_file 0640 "$CONFIG_DIR/config.toml" 1
run chown "root:$SERVICE_USER" "$CONFIG_DIR/config.toml"
environment_file | write_file 0600 "$CONFIG_DIR/kwstream.env" 1

# 5. The unit, replaced on every install. Local changes belong in a drop-in.
write_file 0644 "$UNIT_PATH" 0 <"$DEPLOY_DIR/systemd/kwstream.service"
run systemd-analyze verify "$UNIT_PATH"
run systemctl daemon-reload
run systemctl enable kwstream.service
run systemctl try-restart kwstream.service

cat <<NEXT
install-pi: done. Next:
  - edit $CONFIG_DIR/config.toml ([source] device, [mqtt] url) and $CONFIG_DIR/kwstream.env;
  - sudo systemctl start kwstream; systemctl status kwstream; journalctl -u kwstream -f;
  - metrics: curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep '^kws_source_up'.
NEXT
