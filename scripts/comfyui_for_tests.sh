#!/usr/bin/env bash
# The ComfyUI that `make test` runs tests/comfyui against, importable from the given venv.
#
#   scripts/comfyui_for_tests.sh VENV_PYTHON     prints the ComfyUI folder (stdout); progress on stderr
#
# * COMFYUI_PATH set: that checkout is used as it is (a user's ComfyUI wins over the pinned one).
# * Otherwise the pinned source tarball COMFYUI_TARBALL (default: ../shared/comfyui/ComfyUI-a125cd84.tar.gz,
#   relative to the repository root) is unpacked once, OUTSIDE the repository, into
#   ${CACHEDIT_COMFYUI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/cachedit-tests}/<tarball name>/ComfyUI, and reused
#   (not ".../cachedit/...": tests/comfyui/test_adapter.py finds CacheDit code in torch.compile graphs by
#   "cachedit/" in their stack traces, and ComfyUI frames would match).
# * Either way that ComfyUI's requirements.txt goes into the venv, less torch, torchvision, torchaudio
#   (the venv's CPU torch stays, pinned; tests/comfyui/stubs stands in for torchvision) and spandrel
#   (the upscale-model loader, "non essential" to ComfyUI: it requires torchvision, which would pull a
#   multi-GB CUDA torch). A stamp in the venv, named by the hash of what was installed, skips that next time.
# * The browser test (tests/comfyui/test_browser.py) needs a headless Chromium with CJK fonts (the
#   Chinese UI): Debian's `chromium` and `fonts-noto-cjk` are installed with apt-get when missing (as
#   root, or through passwordless sudo); nothing is downloaded by a browser tool. CHROMIUM=/path/to/chromium
#   (a browser of your own, with CJK fonts on the system) skips this.
set -euo pipefail

py="${1:?usage: $0 VENV_PYTHON}"
root="$(cd "$(dirname "$0")/.." && pwd)"
die() { echo "comfyui_for_tests: $*" >&2; exit 1; }

if [ -n "${COMFYUI_PATH:-}" ]; then
    comfy="$(cd "$COMFYUI_PATH" && pwd)" || die "COMFYUI_PATH=$COMFYUI_PATH is not a folder"
else
    tarball="${COMFYUI_TARBALL:-$root/../shared/comfyui/ComfyUI-a125cd84.tar.gz}"
    [ -f "$tarball" ] || die "no ComfyUI for the integration tests: $tarball is missing.
  Point COMFYUI_PATH at a ComfyUI checkout, or COMFYUI_TARBALL at the pinned source tarball."
    name="$(basename "$tarball")"
    name="${name%.tar.gz}"
    name="${name%.tgz}"
    home="${CACHEDIT_COMFYUI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/cachedit-tests}"
    mkdir -p "$home"
    home="$(cd "$home" && pwd)"
    case "$home/" in "$root"/*) die "$home is inside the repository: ComfyUI is unpacked outside it" ;; esac
    dest="$home/$name"
    comfy="$dest/ComfyUI"
    if [ ! -f "$dest/.unpacked" ]; then
        echo "comfyui_for_tests: unpacking $tarball into $dest" >&2
        tmp="$(mktemp -d "$home/.$name.XXXXXX")"
        tar -xzf "$tarball" -C "$tmp"
        [ -f "$tmp/ComfyUI/comfy/model_base.py" ] || { rm -rf "$tmp"; die "$tarball holds no ComfyUI/ source tree"; }
        touch "$tmp/.unpacked"
        rm -rf "$dest"  # a half-unpacked leftover (no stamp)
        # another `make test` may have finished the same unpacking meanwhile: keep the first
        if [ -e "$dest" ]; then rm -rf "$tmp"; else mv "$tmp" "$dest"; fi
    fi
fi
[ -f "$comfy/comfy/model_base.py" ] || die "$comfy is not a ComfyUI checkout (no comfy/model_base.py)"

have_browser() {
    command -v chromium >/dev/null 2>&1 && command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=zh 2>/dev/null)" ]
}
if [ -z "${CHROMIUM:-}" ] && ! have_browser; then
    echo "comfyui_for_tests: installing chromium and fonts-noto-cjk (apt-get) for the browser test" >&2
    if [ "$(id -u)" = 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        die "the browser test needs chromium and fonts-noto-cjk: install them (apt-get install chromium fonts-noto-cjk) or set CHROMIUM"
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get here: install Chromium and CJK fonts yourself and set CHROMIUM"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        chromium fonts-noto-cjk >&2
    have_browser || die "chromium or the CJK fonts are still missing after apt-get install"
fi

venv="$(cd "$(dirname "$py")/.." && pwd)"
req="$(grep -v -i -E '^[[:space:]]*(torch|torchvision|torchaudio|spandrel)[[:space:]]*([<>=!~;[].*)?$' "$comfy/requirements.txt")"
torch_version="$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))')"
digest="$(printf '%s\n%s\n' "$req" "$torch_version" |
          "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
stamp="$venv/.comfyui-requirements-$digest"
if [ ! -f "$stamp" ]; then
    echo "comfyui_for_tests: installing $comfy/requirements.txt (less torch*, spandrel) into $venv" >&2
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    printf '%s\n' "$req" > "$work/requirements.txt"
    echo "torch==$torch_version" > "$work/constraints.txt"
    "$py" -m pip install -q -r "$work/requirements.txt" -c "$work/constraints.txt" >&2
    touch "$stamp"
fi
echo "$comfy"
