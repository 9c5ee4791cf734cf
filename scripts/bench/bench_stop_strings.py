#!/usr/bin/env python3
"""Do long stop strings slow other clients? (BENCHMARKS.md, hardening issue #13, class 4.)

Against a running `qoq serve` on loopback: client A streams a plain greedy completion and its tokens/s is measured
while two B clients generate at the same time. Each B forces a periodic text with logit_bias (" the the the …") and
either carries 16 stop strings of 401 characters built to almost match that text at every position (the naive
search costs O(text × stop length) per token for each of them) or none. The two B variants alternate, SAMPLES times
each; the report gives A's median tokens/s (with min–max) under each and their ratio. Standard library only; every
loop is bounded; the target must be loopback.

  bench_stop_strings.py --url http://127.0.0.1:18190 --samples 5 --json out.json
"""
import argparse, asyncio, json, statistics, time, urllib.parse


async def stream(host, port, body, timeout=600):
    """POST /v1/completions with stream=true; returns (token chunk times, text)."""
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(dict(body, stream=True)).encode()
    writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    times, text, buf = [], "", b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = await asyncio.wait_for(reader.read(65536), timeout)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    d = json.loads(line[6:])
                    t = d["choices"][0].get("text", "")
                    times.append(time.monotonic())
                    text += t
    writer.close()
    return times, text


async def post(host, port, path, body):
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 600)
    writer.close()
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--a-tokens", type=int, default=128)
    ap.add_argument("--b-tokens", type=int, default=1200)
    ap.add_argument("--json")
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port
    assert host in ("127.0.0.1", "localhost", "::1"), "loopback only"
    the = (await post(host, port, "/tokenize", {"prompt": " the", "add_special_tokens": False}))["tokens"]
    assert len(the) == 1, f"' the' is not one token: {the}"
    stops = [" the" * 100 + c for c in "ABCDEFGHIJKLMNOP"]  # 16 × 401 characters
    a_body = {"prompt": "The history of the city begins", "max_tokens": args.a_tokens, "temperature": 0, "ignore_eos": True}

    async def sample(with_stops):
        b_body = {"prompt": "Say the word:", "max_tokens": args.b_tokens, "temperature": 0, "ignore_eos": True,
                  "logit_bias": {str(the[0]): 100}}
        if with_stops:
            b_body["stop"] = stops
        bs = [asyncio.create_task(stream(host, port, b_body)) for _ in range(2)]
        await asyncio.sleep(6.0)  # the B texts grow past the stop strings' length before A starts
        times, _ = await stream(host, port, a_body)
        for b in bs:
            b.cancel()
        await asyncio.sleep(1.0)
        return (len(times) - 1) / (times[-1] - times[0])

    await sample(False)  # warm-up
    rates = {"no_stops": [], "stops": []}
    for _ in range(args.samples):
        rates["no_stops"].append(await sample(False))
        rates["stops"].append(await sample(True))
    res = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v} for k, v in rates.items()}
    res["ratio"] = res["stops"]["median"] / res["no_stops"]["median"]
    print(json.dumps(res, indent=1))
    if args.json:
        json.dump(res, open(args.json, "w"), indent=1)


asyncio.run(main())
