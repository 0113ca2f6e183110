# Sourced by .ci/run and .ci/between.
find_python() {  # find_python 3.13 -> a Python 3.13 that runs (PATH or pyenv)
  local exe
  for exe in "$(command -v "python$1" 2>/dev/null)" \
             $(ls -d "$(pyenv root 2>/dev/null)"/versions/"$1".*/bin/"python$1" \
               2>/dev/null | sort -V -r); do
    # pyenv's shims are on PATH for every version but run only the selected.
    if [[ -n $exe ]] && "$exe" --version >/dev/null 2>&1; then
      echo "$exe"
      return
    fi
  done
  echo "CI: no Python $1 on this machine" >&2
  return 1
}
