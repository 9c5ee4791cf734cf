# Sourced by the benchmark scripts that start a server: wait_up URL PID polls URL until it answers (up to 300 s) and
# fails as soon as the server process PID has exited.
wait_up() {
  for _ in $(seq 1 600); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "server exited while starting" >&2; return 1; }
    sleep 0.5
  done
  echo "server did not come up" >&2; return 1
}
