# Sourced by the test scripts that drive a real `qoq serve`: start_serve LOG ARGS… starts it on a free loopback port
# (the caller passes --port 0 among ARGS), its output in LOG, and waits until it prints its URL (up to 120 s). Sets
# SERVE_PID and SERVE_PORT and installs an EXIT trap that stops the server and removes LOG. Fails, showing the log,
# when the server exits or never starts.
start_serve() {
  local log=$1; shift
  "$@" > "$log" 2>&1 &
  SERVE_PID=$!
  # shellcheck disable=SC2064  # the values now, not at exit
  trap "kill $SERVE_PID 2>/dev/null || true; rm -f '$log'" EXIT
  SERVE_PORT=""
  for _ in $(seq 1 240); do
    SERVE_PORT="$(sed -n 's#.*http://127.0.0.1:\([0-9]*\)/v1.*#\1#p' "$log" | head -1)"
    [ -n "$SERVE_PORT" ] && return 0
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$log" >&2; echo "qoq serve exited while starting" >&2; return 1; }
    sleep 0.5
  done
  cat "$log" >&2; echo "qoq serve did not start" >&2; return 1
}
