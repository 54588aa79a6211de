#!/bin/sh
# Install the fedbeat device runtime for @DEVICE_ID@ from this bundle, offline.
#
# Written by `fedbeat bundle` (fedbeat @FEDBEAT_VERSION@) for @TARGET@, Python @PYTHON_VERSION@,
# glibc >= @GLIBC_MIN@. Safe to run again: the same bundle changes nothing, a newer bundle
# upgrades the device and keeps its state (beat store, outbox, privacy ledger, models).
#
#   sudo sh install.sh                       venv in /opt/fedbeat, config and keys in /etc/fedbeat,
#                                            state in /var/lib/fedbeat, service fedbeat-device
#   sh install.sh --prefix DIR --no-systemd  everything under DIR (tests, non-root installs)
#
# No network is used: packages come from wheels/ with `pip install --no-index`.
set -eu

DEVICE_ID='@DEVICE_ID@'
TARGET='@TARGET@'
MACHINE='@MACHINE@'
PYTHON_VERSION='@PYTHON_VERSION@'
GLIBC_MIN='@GLIBC_MIN@'
SERVICE=fedbeat-device
SERVICE_USER=fedbeat

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

say() {
    echo "install.sh: $*" >&2
}

usage() {
    cat <<EOF
usage: sh install.sh [--prefix DIR] [--no-systemd] [--python PATH]

Installs the fedbeat device runtime for $DEVICE_ID ($TARGET, Python $PYTHON_VERSION) offline.

  --prefix DIR   install into DIR/venv, DIR/etc and DIR/state instead of /opt/fedbeat/venv,
                 /etc/fedbeat and /var/lib/fedbeat (needs --no-systemd)
  --no-systemd   do not create the service user or install and start the systemd unit
  --python PATH  the Python $PYTHON_VERSION interpreter to build the venv with
                 (default: python$PYTHON_VERSION, else python3 if it is $PYTHON_VERSION)
EOF
}

PREFIX=''
SYSTEMD=1
PYTHON=''
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

BUNDLE=$(cd "$(dirname "$0")" && pwd -P)
[ -f "$BUNDLE/bundle.json" ] && [ -d "$BUNDLE/wheels" ] \
    || die "$BUNDLE is not an extracted fedbeat bundle (no bundle.json or wheels/)"

# --- checks first: nothing is written until the machine is known to fit the bundle ----------

machine=$(uname -m)
case "$machine" in
    arm64) machine=aarch64 ;;
    amd64) machine=x86_64 ;;
esac
[ "$(uname -s)" = Linux ] || die "this bundle is for Linux, not $(uname -s)"
[ "$machine" = "$MACHINE" ] || die "this bundle is for $TARGET but this machine is $machine; \
build one for it: fedbeat bundle --target linux-$machine ..."

glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
[ -n "$glibc" ] || die "glibc not found (musl-based systems such as Alpine cannot use \
manylinux wheels); use a glibc-based OS such as Raspberry Pi OS, Debian or Ubuntu"
have_major=${glibc%%.*}
have_minor=${glibc#*.}
need_major=${GLIBC_MIN%%.*}
need_minor=${GLIBC_MIN#*.}
if [ "$have_major" -lt "$need_major" ] || \
   { [ "$have_major" -eq "$need_major" ] && [ "$have_minor" -lt "$need_minor" ]; }; then
    die "the bundled wheels need glibc >= $GLIBC_MIN, this system has $glibc; upgrade the OS \
(Debian 10 or later, Raspberry Pi OS bookworm recommended)"
fi

python_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

if [ -z "$PYTHON" ]; then
    for candidate in "python$PYTHON_VERSION" python3; do
        if command -v "$candidate" >/dev/null 2>&1 && \
           [ "$(python_version "$candidate")" = "$PYTHON_VERSION" ]; then
            PYTHON=$(command -v "$candidate")
            break
        fi
    done
    [ -n "$PYTHON" ] || die "Python $PYTHON_VERSION not found (python$PYTHON_VERSION or python3); \
install it (apt install python$PYTHON_VERSION python$PYTHON_VERSION-venv) or build a bundle for \
this machine's Python: fedbeat bundle --python $(python_version python3) ..."
else
    found=$(python_version "$PYTHON")
    [ "$found" = "$PYTHON_VERSION" ] || die "$PYTHON is Python ${found:-?}, the bundle needs \
$PYTHON_VERSION"
fi
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON cannot create virtual \
environments; install the venv module (apt install python$PYTHON_VERSION-venv)"

if [ -n "$PREFIX" ]; then
    [ "$SYSTEMD" -eq 0 ] || die "--prefix installs cannot run the systemd service (its paths \
are fixed); add --no-systemd"
    case "$PREFIX" in
        /*) ;;
        *) PREFIX="$(pwd -P)/$PREFIX" ;;
    esac
    case "$PREFIX" in
        *[!A-Za-z0-9/._+-]*) die "--prefix may contain only letters, digits and / . _ + -" ;;
    esac
    VENV_DIR="$PREFIX/venv"
    CONFIG_DIR="$PREFIX/etc"
    STATE_DIR="$PREFIX/state"
else
    VENV_DIR=/opt/fedbeat/venv
    CONFIG_DIR=/etc/fedbeat
    STATE_DIR=/var/lib/fedbeat
fi

if [ "$SYSTEMD" -eq 1 ]; then
    [ "$(id -u)" -eq 0 ] || die "installing the service needs root (sudo sh install.sh), \
or use --prefix DIR --no-systemd"
    command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] \
        || die "systemd is not running here; use --no-systemd and start \
'$VENV_DIR/bin/fedbeat device run --config $CONFIG_DIR/device.toml' another way"
fi

# --- install ------------------------------------------------------------------------------

umask 077
say "installing fedbeat for $DEVICE_ID into $VENV_DIR (config $CONFIG_DIR, state $STATE_DIR)"

if [ "$SYSTEMD" -eq 1 ] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    say "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "fedbeat device daemon" "$SERVICE_USER"
fi

# The venv: reused when it has the right Python, rebuilt otherwise.
if [ -x "$VENV_DIR/bin/python" ] && \
   [ "$(python_version "$VENV_DIR/bin/python")" != "$PYTHON_VERSION" ]; then
    say "replacing $VENV_DIR (built for another Python)"
    rm -rf "$VENV_DIR"
fi
if [ ! -x "$VENV_DIR/bin/python" ]; then
    mkdir -p "$(dirname "$VENV_DIR")"
    (umask 022 && "$PYTHON" -m venv "$VENV_DIR")
fi

# pip sees no configuration file and no PIP_* variable: only the bundle's wheels, each pinned
# and checked against its SHA-256.
pip_offline() {
    (umask 022 && PIP_CONFIG_FILE=/dev/null "$VENV_DIR/bin/python" -m pip --isolated \
        --disable-pip-version-check --no-input "$@" --no-index --find-links "$BUNDLE/wheels" \
        --no-cache-dir)
}
pip_offline install --quiet --require-hashes -r "$BUNDLE/requirements.txt" \
    || die "pip could not install the bundled wheels (see above)"
# The same fedbeat version may be rebuilt with changes: always reinstall fedbeat itself.
pip_offline install --quiet --no-deps --force-reinstall "$BUNDLE"/wheels/fedbeat-*.whl \
    || die "pip could not install fedbeat (see above)"

# Configuration, keys and the initial model. Replaced as a whole, the previous copy removed
# only once the new one is in place.
replace_dir() {  # replace_dir SRC DEST
    rm -rf "$2.new" "$2.old"
    cp -R "$1" "$2.new"
    if [ -e "$2" ]; then mv "$2" "$2.old"; fi
    mv "$2.new" "$2"
    rm -rf "$2.old"
}

mkdir -p "$CONFIG_DIR" "$STATE_DIR"
chmod 0700 "$STATE_DIR"
replace_dir "$BUNDLE/keys" "$CONFIG_DIR/keys"
find "$CONFIG_DIR/keys" -type d -exec chmod 0700 {} +
find "$CONFIG_DIR/keys" -type f -exec chmod 0600 {} +
replace_dir "$BUNDLE/model" "$CONFIG_DIR/model"
find "$CONFIG_DIR/model" -type d -exec chmod 0755 {} +
find "$CONFIG_DIR/model" -type f -exec chmod 0644 {} +

config="$CONFIG_DIR/device.toml"
sed "s#@STATE_DIR@#$STATE_DIR#g" "$BUNDLE/config/device.toml" > "$config.new"
chmod 0644 "$config.new"
if [ -f "$config" ] && ! cmp -s "$config" "$config.new"; then
    cp -p "$config" "$config.previous"
    say "$config replaced; the previous one is $config.previous"
fi
mv "$config.new" "$config"
cp "$BUNDLE/bundle.json" "$CONFIG_DIR/bundle.json"
chmod 0644 "$CONFIG_DIR/bundle.json"

if [ "$SYSTEMD" -eq 1 ]; then
    chown -R "$SERVICE_USER:$SERVICE_USER" "$CONFIG_DIR/keys" "$STATE_DIR"
    chown root:"$SERVICE_USER" "$CONFIG_DIR"
    chmod 0750 "$CONFIG_DIR"
fi

# The keys load (right files, owner-only private keys) before anything is started.
"$VENV_DIR/bin/python" -c 'import sys
from fedbeat.broker.identity import DeviceIdentity
identity = DeviceIdentity.load(sys.argv[1])
if identity.device_id != sys.argv[2]:
    sys.exit("keys are for %s, not %s" % (identity.device_id, sys.argv[2]))
' "$CONFIG_DIR/keys" "$DEVICE_ID" || die "the bundled keys do not load (see above)"
"$VENV_DIR/bin/fedbeat" --version >/dev/null || die "the installed fedbeat does not start"

if [ "$SYSTEMD" -eq 1 ]; then
    (umask 022 && cp "$BUNDLE/systemd/$SERVICE.service" "/etc/systemd/system/$SERVICE.service")
    systemctl daemon-reload
    systemctl enable "$SERVICE.service"
    systemctl restart "$SERVICE.service"
    say "installed; service $SERVICE enabled and (re)started: journalctl -u $SERVICE -f"
else
    say "installed; run: $VENV_DIR/bin/fedbeat device run --config $config"
fi
