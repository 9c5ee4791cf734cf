#!/usr/bin/env python3
"""Bounded load test of an OpenAI-compatible server on loopback (qoq serve, or llama.cpp's server).

N concurrent streaming clients send R /v1/completions requests in all (prompts: WikiText-2 validation paragraphs),
every K-th client hangs up after a few chunks. Two loads for prefix caching (issue #18): --shared-prefix-chars C puts
the same C-character "system prompt" before every request's own paragraph (a chat service), and --turns T makes each
client hold a T-turn conversation whose every request is the previous prompt, its answer and a new paragraph. Measures time to first token (p50/p99), end-to-end latency and
throughput, counts failures (a non-200, or a kept stream that ends without [DONE]), and, for qoq, reads /metrics
afterwards to check that no KV page is left in use. Standard library only (asyncio + raw HTTP/1.1), so the client
costs both servers the same. Every request loop is bounded in count and time; targets must be loopback.

  load_test.py --url http://127.0.0.1:8080 --clients 64 --requests 320 --max-tokens 64 --cancel-every 8 --json out.json
  load_test.py --clients 64 --requests 128 --shared-prefix-chars 4400 --prompt-chars 400 --cancel-every 0
  load_test.py --clients 16 --turns 4 --prompt-chars 400 --cancel-every 0
"""
import argparse, asyncio, json, random, statistics, sys, time, urllib.parse


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def http(host, port, method, path, body=None, headers=None, timeout=600):
    """One request on its own connection; returns (reader, writer, status, headers)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    writer.write(head.encode() + b"\r\n" + data)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    status = int(status_line.split()[1])
    hdrs = {}
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return reader, writer, status, hdrs


async def body_chunks(reader, hdrs, timeout):
    """Yields the body's bytes as they arrive (chunked or until close)."""
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await asyncio.wait_for(reader.readline(), timeout)).strip() or b"0", 16)
            if size == 0:
                return
            data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            yield data[:-2]
    else:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return
            yield data


async def one_request(args, host, port, prompt, cancel_after, stats, turn=0):
    """Streams one completion; returns its text (None when it failed or was cancelled)."""
    body = {"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0.0, "stream": True}
    if args.ignore_eos:
        body["ignore_eos"] = True
    t0 = time.perf_counter()
    ttft, chunks, done, buf, text = None, 0, False, b"", []
    try:
        reader, writer, status, hdrs = await http(host, port, "POST", "/v1/completions", body, args.headers, args.timeout)
    except Exception as e:  # connection refused / reset: a failure
        stats["failures"].append(f"connect: {e!r}")
        return None
    try:
        if status != 200:
            stats["failures"].append(f"status {status}")
            return None
        async for data in body_chunks(reader, hdrs, args.timeout):
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    continue
                payload = event[6:]
                if payload == b"[DONE]":
                    done = True
                    continue
                obj = json.loads(payload)
                if "error" in obj:
                    stats["failures"].append(f"stream error {obj['error']}")
                    continue
                for c in obj.get("choices", []):
                    if c.get("text"):
                        text.append(c["text"])
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                if obj.get("usage"):
                    stats["usage_tokens"] += obj["usage"].get("completion_tokens", 0)
                if cancel_after and chunks >= cancel_after:
                    stats["cancelled"] += 1
                    return None
            if done:
                break
        if not done:
            stats["failures"].append("stream ended without [DONE]")
            return None
        stats["ok"] += 1
        first = ttft if ttft is not None else time.perf_counter() - t0
        stats["ttft"].append(first)
        if turn > 0:
            stats["ttft_later"].append(first)
        stats["e2e"].append(time.perf_counter() - t0)
        return "".join(text)
    finally:
        stats["chunks"] += chunks
        writer.close()


async def run(args):
    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port or 80
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        sys.exit("load_test.py only targets loopback addresses")
    rng = random.Random(0)
    paras = [p.strip() for p in open(args.prompts, encoding="utf-8").read().split("\n \n") if len(p.strip()) > 200]
    requests = args.clients * args.turns if args.turns else args.requests
    prompts = [paras[rng.randrange(len(paras))][: args.prompt_chars] for _ in range(requests)]
    if args.shared_prefix_chars:
        # One "system prompt" (whole paragraphs, cut to length) shared by every request, then its own paragraph.
        system, k = "", 0
        while len(system) < args.shared_prefix_chars:
            system += paras[k] + "\n\n"
            k += 1
        prompts = [system[: args.shared_prefix_chars] + "\n\nQuestion: " + p for p in prompts]
    stats = {"ok": 0, "cancelled": 0, "failures": [], "ttft": [], "ttft_later": [], "e2e": [], "chunks": 0, "usage_tokens": 0}
    queue = list(enumerate(prompts))

    async def client(cid):
        if args.turns:
            # One conversation: turn t's prompt is turn t-1's prompt, its answer, and a new paragraph.
            history = ""
            for t in range(args.turns):
                history += ("\n\nUser: " if t else "User: ") + prompts[cid * args.turns + t] + "\nAssistant:"
                answer = await one_request(args, host, port, history, 0, stats, turn=t)
                if answer is None:
                    return
                history += answer
            return
        while queue:
            i, p = queue.pop(0)
            cancel = args.cancel_after if args.cancel_every and i % args.cancel_every == args.cancel_every - 1 else 0
            await one_request(args, host, port, p, cancel, stats)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(args.clients))), args.deadline)
    wall = time.perf_counter() - t0
    out = {
        "url": args.url, "clients": args.clients, "requests": requests, "max_tokens": args.max_tokens,
        "shared_prefix_chars": args.shared_prefix_chars, "turns": args.turns, "prompt_chars": args.prompt_chars,
        "ok": stats["ok"], "cancelled": stats["cancelled"], "failed": len(stats["failures"]),
        "failures": stats["failures"][:10], "wall_s": round(wall, 2),
        "ttft_p50_s": round(percentile(stats["ttft"], 50), 3), "ttft_p99_s": round(percentile(stats["ttft"], 99), 3),
        "ttft_later_turns_p50_s": round(percentile(stats["ttft_later"], 50), 3),
        "ttft_later_turns_p99_s": round(percentile(stats["ttft_later"], 99), 3),
        "e2e_p50_s": round(percentile(stats["e2e"], 50), 3), "e2e_p99_s": round(percentile(stats["e2e"], 99), 3),
        "stream_chunks": stats["chunks"], "chunks_per_s": round(stats["chunks"] / wall, 1),
        "requests_per_s": round((stats["ok"] + stats["cancelled"]) / wall, 2),
    }
    if args.check_metrics:
        reader, writer, status, hdrs = await http(host, port, "GET", "/metrics", None, args.headers)
        text = b"".join([d async for d in body_chunks(reader, hdrs, 30)]).decode()
        writer.close()
        gauges = {}
        for line in text.splitlines():
            if line.startswith(("qoq_kv_pages_used ", "qoq_running_requests ", "qoq_queue_depth ", "qoq_prefix_cache_")):
                k, v = line.split()
                gauges[k] = float(v)
        out["after"] = gauges
        out["cancelled_by_server"] = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith('qoq_requests_total{outcome="cancelled"}'))
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        import os
        os.replace(args.json + ".tmp", args.json)
    leaked = args.check_metrics and (out["after"].get("qoq_kv_pages_used", 1) != 0 or out["after"].get("qoq_running_requests", 1) != 0)
    return 1 if out["failed"] or leaked else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", default="data/calibration/wikitext-2-valid.tokens.txt")
    ap.add_argument("--prompt-chars", type=int, default=600, help="characters of each prompt (~150 tokens)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--cancel-every", type=int, default=8, help="every K-th request hangs up midway (0: none)")
    ap.add_argument("--cancel-after", type=int, default=4, help="chunks read before hanging up")
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--shared-prefix-chars", type=int, default=0, help="a shared system prompt of this many characters")
    ap.add_argument("--turns", type=int, default=0, help="each client holds a conversation of this many turns")
    ap.add_argument("--api-key")
    ap.add_argument("--check-metrics", action="store_true", help="read qoq's /metrics afterwards: no page in use")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per read")
    ap.add_argument("--deadline", type=float, default=1800, help="seconds for the whole run")
    ap.add_argument("--json")
    args = ap.parse_args()
    args.headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
