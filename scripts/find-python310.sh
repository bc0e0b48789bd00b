#!/usr/bin/env bash
# Print the path of a working Python 3.10 interpreter, or explain what to install and fail.
# lava-nc 0.10.0 runs only on Python 3.10 (on 3.11 it fails at import), so nothing else will do.
set -u
works() { "$@" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }
emit() { "$@" -c 'import sys; print(sys.executable)'; exit 0; }

if [ -n "${PYTHON:-}" ]; then
  works "$PYTHON" && emit "$PYTHON"
  echo "error: PYTHON=$PYTHON is not a working Python 3.10 with venv" >&2; exit 1
fi
for cand in python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10; do
  command -v "$cand" >/dev/null 2>&1 && works "$cand" && emit "$cand"
done
for root in "$(pyenv root 2>/dev/null)" "${PYENV_ROOT:-$HOME/.pyenv}"; do
  [ -d "$root/versions" ] || continue
  for dir in $(ls -d "$root"/versions/3.10* 2>/dev/null | sort -V -r); do
    works "$dir/bin/python3.10" && emit "$dir/bin/python3.10"
  done
done
cat >&2 <<'MSG'
error: spikeforge needs Python 3.10 (lava-nc 0.10.0, the Loihi 2 simulator, runs only on 3.10)
and none was found (tried $PYTHON, python3.10 on PATH, /usr/bin, /usr/local/bin, pyenv versions).
Install one of:
  pyenv install 3.10            # then run make again
  apt-get install python3.10 python3.10-venv   # where your distribution has it
or point to one:  make demo PYTHON=/path/to/python3.10
MSG
exit 1
