# Sourced by reproduce/run and reproduce/test: make the environment and the real data exist.
# Idempotent: on a machine where both are ready it costs a couple of seconds.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export DVC_NO_ANALYTICS=1          # DVC must not phone home (no network here)
export HF_HUB_OFFLINE=1            # the MiniLM text encoder ships in a package; never hit a hub
export TRANSFORMERS_OFFLINE=1
export PYTHONUNBUFFERED=1
# No MPLBACKEND: a notebook kernel then picks the inline backend, so executed notebooks embed their
# figures (with MPLBACKEND=Agg inherited, every plt.show() was dropped); plain Python falls back to
# Agg by itself on a machine without a display.
unset MPLBACKEND
# tqdm.auto in a notebook kernel wants ipywidgets for a widget bar, warns in red that IProgress is
# missing, then draws the text bar anyway; the text bar is the one papermill --log-output shows in
# the dvc repro output, so keep it and drop the warning. (A message filter: PYTHONWARNINGS is read
# before site-packages, so tqdm's own warning class cannot be named here.)
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:IProgress not found"

say() { printf '\033[1m[atelier]\033[0m (%dm%02ds) %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

find_python() {
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
      command -v "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11 or 3.12 is required (none found on PATH)" >&2
  return 1
}

ensure_env() {
  # uv.lock is the one source of truth for versions; environment.yml mirrors it for conda users.
  if ! command -v uv >/dev/null 2>&1; then
    say "installing uv (the environment manager) with pip"
    "$(find_python)" -m pip install --quiet uv || { echo "error: could not install uv with pip" >&2; return 1; }
    export PATH="$HOME/.local/bin:$PATH"
  fi
  say "syncing the environment in .venv from uv.lock (first time: several GB of wheels)"
  # An existing environment is synced in place: passing --python again makes uv replace the whole
  # venv (it compares interpreter paths), which breaks any process using it at that moment.
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' 2>/dev/null; then
    uv sync --frozen --quiet
  else
    uv sync --frozen --python "$(find_python)" --quiet
  fi
  export PATH="$ROOT/.venv/bin:$PATH"
  export VIRTUAL_ENV="$ROOT/.venv"
}

ensure_data() {
  # Real Fashion-MNIST: the Debian package when present, else torchvision's download (internet).
  if ! python -m lib.data.fashion_mnist verify data/fashion-mnist >/dev/null 2>&1; then
    if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      say "installing Debian package dataset-fashion-mnist"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
        || say "apt-get could not install dataset-fashion-mnist; trying torchvision's download"
    fi
    say "obtaining real Fashion-MNIST into data/fashion-mnist"
    python -m lib.data.fashion_mnist fetch data/fashion-mnist
  fi
  python -m lib.data.fashion_mnist verify data/fashion-mnist
}

ensure_java() {
  # Caption metrics (UniFashion Table 2) run Java programs: pycocoevalcap's PTB tokenizer (Stanford
  # CoreNLP) and METEOR. Without java the captioning stage reports those metrics as unavailable.
  if command -v java >/dev/null 2>&1; then return 0; fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Debian package default-jre-headless (Java, for the caption metrics)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless) >/dev/null \
      && return 0
  fi
  say "warning: no Java (install a JRE, e.g. apt-get install default-jre-headless); BLEU/METEOR/CIDEr of the captioning stage will be reported as unavailable"
}
