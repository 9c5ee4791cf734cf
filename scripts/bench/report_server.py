"""Formats bench_server.sh's JSON as the server section of BENCHMARKS.md (qoq vs llama.cpp's server, one run)."""
import json, os, sys


def load(p):
    return json.load(open(p)) if os.path.exists(p) else None


def main():
    q, l = load(sys.argv[1]), load(sys.argv[2]) if len(sys.argv) > 2 else None
    rows = [("requests finished / hung up by the client / failed", lambda d: f"{d['ok']} / {d['cancelled']} / {d['failed']}"),
            ("time to first token p50 (s)", lambda d: f"{d['ttft_p50_s']:.3f}"),
            ("time to first token p99 (s)", lambda d: f"{d['ttft_p99_s']:.3f}"),
            ("end-to-end latency p50 (s)", lambda d: f"{d['e2e_p50_s']:.2f}"),
            ("end-to-end latency p99 (s)", lambda d: f"{d['e2e_p99_s']:.2f}"),
            ("streamed tokens per second (all clients)", lambda d: f"{d['chunks_per_s']:.1f}"),
            ("requests per second", lambda d: f"{d['requests_per_s']:.2f}"),
            ("wall time (s)", lambda d: f"{d['wall_s']:.1f}")]
    print(f"Load: {q['clients']} concurrent streaming clients, {q['requests']} requests of ~150 prompt tokens and {q['max_tokens']} "
          f"new tokens (greedy), every 8th client hanging up after 4 chunks; loopback, 2 vCPU shared by the server and the client.\n")
    print("| | qoq serve (QoQ W4A8KV4) | llama.cpp server (Q4_0) | ratio |\n|---|---|---|---|")
    for name, f in rows:
        a = f(q)
        b = f(l) if l else "n/a"
        ratio = ""
        if l and "/" not in a:
            x, y = float(a), float(b)
            if x > 0 and y > 0:
                better_high = "per second" in name
                ratio = f"{(x / y if better_high else y / x):.1f}× {'more' if better_high else 'lower'}" if (x / y if better_high else y / x) >= 1 else \
                        f"{(y / x if better_high else x / y):.1f}× {'less' if better_high else 'higher'}"
        print(f"| {name} | {a} | {b} | {ratio} |")
    after = q.get("after", {})
    print(f"\nAfter the run qoq's /metrics read: KV pages in use {after.get('qoq_kv_pages_used')}, running {after.get('qoq_running_requests')}, "
          f"queued {after.get('qoq_queue_depth')}; requests the server counted as cancelled: {q.get('cancelled_by_server')}. "
          f"SIGTERM then drained and exited with status {q.get('sigterm_exit')}.")


if __name__ == "__main__":
    main()
