#!/usr/bin/env python3
"""A small, bounded load test of a running `ember serve` (standard library only).

Usage:
    python load_test.py --base-url http://127.0.0.1:PORT --clients 8 --requests 20 \
        --max-tokens 16 [--api-key KEY] [--pid PID] [--system-words N]
        [--duration SECONDS] [--cancel-fraction F]

Each of --clients threads sends --requests chat completions one after the other
(temperature 0.8, seed client*1000+i, a short prompt), streamed. At the end one JSON
line reports the requests, failures, throughput (requests/s, completion tokens/s),
latency percentiles, the time to the first streamed piece of text and the time
between pieces (a piece is a token, except where a character spans tokens); with
--pid, also the server's resident memory (VmRSS of /proc/PID/status) before, every
second during, and after the run, so that growth shows. With --system-words, every
request begins with the same system message of that many words (a shared prefix, as
an application's system prompt is) and the report adds the prompt tokens the server
took from its prefix cache (usage.prompt_tokens_details.cached_tokens). A soak:
--duration makes each client go on sending until that many seconds have passed
(instead of --requests each), and --cancel-fraction abandons that share of the
requests (chosen by a seeded generator) after their first piece of text, closing the
connection as a departing client does; those count as cancelled, not failed, and the
memory report adds the largest resident size of the first and of the last window
(a minute, or a third of the run if shorter) and of each tenth of the run.
Exits 0 only when every request not cancelled succeeded.

Only loopback addresses are meant as targets: this is a test of a local server.
"""

import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request

PROMPTS = [
    "Say hello in one short sentence.",
    "Name a colour.",
    "Count from one to five.",
    "What is two plus two?",
    "Give me a word that rhymes with cat.",
    "Write a very short greeting.",
]


def rss_mib(pid):
    """Resident memory of `pid` in MiB, or None when it cannot be read (gone, no /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # the value is in kB
    except OSError:
        return None
    return None


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100), at least 1
    return sorted_values[int(rank) - 1]


class Cancelled(Exception):
    """The client left after the first piece of text, as asked."""


def request_stream(url, body, headers, timeout, t0, cancel=False):
    """POSTs a streamed chat completion; returns (status, text, usage, seconds to the
    first piece of text, seconds between pieces). With `cancel`, closes the connection
    after the first piece of text and raises Cancelled."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    text, usage, first, last, gaps = "", None, None, None, []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue  # blank separators and keep-alive comments
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    now = time.monotonic()
                    if first is None:
                        first = now - t0
                    else:
                        gaps.append(now - last)
                    last = now
                    text += piece
                    if cancel:
                        raise Cancelled()
        return r.status, text, usage, first, gaps


def get_model(root, headers, timeout):
    req = urllib.request.Request(root + "/v1/models", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())["data"][0]["id"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="the server's root, e.g. http://127.0.0.1:8080 (a trailing /v1 is accepted)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--api-key")
    ap.add_argument("--pid", type=int, help="the server's process id, to sample its memory")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one request may take")
    ap.add_argument("--duration", type=float,
                    help="seconds each client goes on sending (a soak), instead of --requests")
    ap.add_argument("--cancel-fraction", type=float, default=0.0,
                    help="share of requests abandoned after their first piece of text (default 0)")
    ap.add_argument("--system-words", type=int, default=0,
                    help="a system message of this many words shared by every request (default none)")
    args = ap.parse_args()

    root = args.base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"

    try:
        model = get_model(root, headers, args.timeout)
    except (OSError, ValueError, KeyError, IndexError) as e:  # refused, 401, not the API, ...
        detail = e.read()[:200].decode(errors="replace") if isinstance(e, urllib.error.HTTPError) else ""
        print(json.dumps({"ok": False, "error": f"GET {root}/v1/models failed: {e} {detail}".strip()}))
        return 1
    url = root + "/v1/chat/completions"
    words = "the assistant answers briefly and plainly about weather rivers and hills".split()
    system = " ".join(words[i % len(words)] for i in range(args.system_words))

    # Results, appended under a lock by the client threads.
    lock = threading.Lock()
    latencies = []          # seconds, successful requests only
    first_pieces = []       # seconds to the first piece of text
    between_pieces = []     # seconds between two pieces of one answer
    completion_tokens = [0]
    cached_tokens = [0]     # prompt tokens the server's prefix cache supplied
    cancelled = [0]         # requests abandoned on purpose (--cancel-fraction)
    sent = [0]              # requests started
    failures = []           # (client, i, reason), the first few kept in the report
    statuses = {}           # HTTP status (or "error") -> count

    # Memory sampler: before, once a second while the clients run, after.
    rss = []
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.wait(1.0):
            v = rss_mib(args.pid)
            if v is not None:
                rss.append((time.monotonic(), v))

    def client(c, barrier):
        barrier.wait()  # all clients start together
        rng = random.Random(c)
        deadline = time.monotonic() + args.duration if args.duration else None
        i = 0
        while (time.monotonic() < deadline) if deadline else (i < args.requests):
            i += 1
            cancel = rng.random() < args.cancel_fraction
            with lock:
                sent[0] += 1
            body = {
                "model": model,
                "messages": ([{"role": "system", "content": system}] if system else [])
                + [{"role": "user", "content": PROMPTS[(c + i) % len(PROMPTS)]}],
                "max_tokens": args.max_tokens,
                "temperature": 0.8,
                "seed": c * 1000 + i,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            t0 = time.monotonic()
            try:
                status, content, usage, first, gaps = request_stream(url, body, headers, args.timeout, t0, cancel)
                elapsed = time.monotonic() - t0
                # A 200 must still be a well-formed answer to count as a success.
                n = (usage or {}).get("completion_tokens")
                if not isinstance(n, int) or not 0 <= n <= args.max_tokens:
                    raise ValueError(f"malformed answer: usage {usage}, text {content[:100]!r}")
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    latencies.append(elapsed)
                    if first is not None:
                        first_pieces.append(first)
                    between_pieces.extend(gaps)
                    completion_tokens[0] += n
                    cached_tokens[0] += ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            except Cancelled:
                with lock:
                    cancelled[0] += 1
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode(errors="replace")
                with lock:
                    statuses[e.code] = statuses.get(e.code, 0) + 1
                    failures.append((c, i, f"HTTP {e.code}: {detail}"))
            except Exception as e:  # connection reset, timeout, bad JSON, ...
                with lock:
                    statuses["error"] = statuses.get("error", 0) + 1
                    failures.append((c, i, f"{type(e).__name__}: {e}"))

    rss_before = rss_mib(args.pid) if args.pid else None
    sampler = threading.Thread(target=sample, daemon=True) if args.pid else None
    barrier = threading.Barrier(args.clients + 1)
    threads = [threading.Thread(target=client, args=(c, barrier), daemon=True) for c in range(args.clients)]
    for t in threads:
        t.start()
    if sampler:
        sampler.start()
    barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    stop_sampling.set()
    if sampler:
        sampler.join()
    # Give the server a moment to free per-request memory before the last sample.
    if args.pid:
        time.sleep(1.0)
    rss_after = rss_mib(args.pid) if args.pid else None

    total = sent[0]
    lat = sorted(latencies)
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    spread = lambda values: {p: ms(percentile(sorted(values), int(p[1:]))) for p in ("p50", "p90", "p99")}  # noqa: E731
    report = {
        "ok": not failures,
        "model": model,
        "clients": args.clients,
        "requests": total,
        "succeeded": len(lat),
        "cancelled": cancelled[0],
        "failures": len(failures),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 2) if wall > 0 else None,
        "completion_tokens": completion_tokens[0],
        "completion_tokens_per_s": round(completion_tokens[0] / wall, 1) if wall > 0 else None,
        "cached_prompt_tokens": cached_tokens[0],
        "latency_ms": {
            "p50": ms(percentile(lat, 50)),
            "p90": ms(percentile(lat, 90)),
            "p99": ms(percentile(lat, 99)),
            "max": ms(lat[-1] if lat else None),
        },
        "time_to_first_token_ms": spread(first_pieces),
        "inter_token_ms": spread(between_pieces),
    }
    if args.pid:
        during = [v for _, v in rss]
        samples = [v for v in [rss_before, *during, rss_after] if v is not None]
        report["rss_mib"] = {
            "first": round(samples[0], 1) if samples else None,
            "max": round(max(samples), 1) if samples else None,
            "last": round(samples[-1], 1) if samples else None,
            "samples": len(samples),
            "alive_after": rss_after is not None,  # False: the server died during the run
        }
        if args.duration and rss:
            # A soak: memory should not grow from the first window to the last.
            window = min(60.0, args.duration / 3)
            t_first, t_last = rss[0][0], rss[-1][0]
            report["rss_mib"]["window_s"] = window
            report["rss_mib"]["first_window_max"] = round(max(v for t, v in rss if t <= t_first + window), 1)
            report["rss_mib"]["last_window_max"] = round(max(v for t, v in rss if t >= t_last - window), 1)
            # The shape of any growth (a steady climb is a leak, a few steps an
            # allocator's high-water mark): the largest size in each tenth of the run.
            tenth = max((t_last - t_first) / 10, 1e-9)
            tenths = {}
            for t, v in rss:
                k = min(int((t - t_first) / tenth), 9)
                tenths[k] = max(tenths.get(k, v), v)
            report["rss_mib"]["by_tenth"] = [round(tenths[k], 1) for k in sorted(tenths)]
    if failures:
        report["first_failures"] = [f"client {c} request {i}: {why}" for c, i, why in failures[:5]]
    print(json.dumps(report))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
