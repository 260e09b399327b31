"""Drives the billing callback module the way the proxy does, and prints its CPU per call as JSON.

Run by bench/callback.ts (not by hand): one LiteLLM payload (a captured standard_logging_object)
per call at a fixed rate, through `async_log_success_event` on this process's event loop, to the
real webhook service; then waits until the service has acknowledged every record. CPU is read per
thread: the calling thread (what `_enqueue` costs the proxy's event loop) and the callback's own
sender thread, plus the whole process. With --module none it runs the same loop without a callback
(the driver's own cost, subtracted by the caller).

    python bench/callback_cpu.py --module proxy/lago_billing.py --url http://127.0.0.1:PORT \
        --secret S --rate 25 --seconds 20 [--transport aiohttp|httpx|urllib] [--linger-ms 0]
"""
import argparse
import asyncio
import copy
import importlib.util
import json
import os
import tempfile
import time
import uuid


def load(path):
    spec = importlib.util.spec_from_file_location("lago_billing_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--secret", default="")
    ap.add_argument("--fixture", default="test/fixtures/litellm/nonstream.json")
    ap.add_argument("--rate", type=float, default=25)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--transport")
    ap.add_argument("--linger-ms", type=float)
    a = ap.parse_args()

    with open(a.fixture) as f:
        template = json.load(f)
    n = max(1, int(a.rate * a.seconds))
    tmp = tempfile.mkdtemp(prefix="callback-bench-")
    cb, posts = None, [0]
    if a.module != "none":
        kwargs = {"service_url": a.url, "secret": a.secret, "spool_path": os.path.join(tmp, "spool.ndjson")}
        if a.transport:
            kwargs["transport"] = a.transport
        if a.linger_ms is not None:
            kwargs["linger"] = a.linger_ms
        cb = load(a.module).LagoBillingCallback(**kwargs)
        post = cb._post

        async def counted(body):
            posts[0] += 1
            return await post(body)

        cb._post = counted

    # Warm-up: start the sender thread and open its connection, outside the measured window.
    if cb is not None:
        await cb.async_log_success_event({"standard_logging_object": dict(template, id=f"warm-{uuid.uuid4()}")},
                                         None, None, None)
        deadline = time.monotonic() + 30
        while cb.delivered < 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"the warm-up record was not acknowledged by {a.url} within 30 s")
            await asyncio.sleep(0.01)
        posts[0] = 0
    sender = cb._thread.ident if cb is not None else None
    sender_cpu = (lambda: time.clock_gettime(time.pthread_getcpuclockid(sender))) if sender else (lambda: 0.0)

    t_main, t_sender, t_proc, t_wall = time.thread_time(), sender_cpu(), time.process_time(), time.perf_counter()
    base = time.monotonic()
    for i in range(n):
        delay = base + i / a.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        payload = copy.copy(template)  # what LiteLLM hands every callback: a fresh dict per call
        payload["id"] = f"bench-{uuid.uuid4()}"
        payload["litellm_call_id"] = str(uuid.uuid4())
        if cb is not None:
            await cb.async_log_success_event({"standard_logging_object": payload}, None, None, None)
    deadline = time.monotonic() + 30
    while cb is not None and cb.delivered < n + 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    out = {
        "calls": n,
        "delivered": (cb.delivered - 1) if cb is not None else n,
        "posts": posts[0],
        "wall_s": time.perf_counter() - t_wall,
        "main_cpu_s": time.thread_time() - t_main,
        "sender_cpu_s": sender_cpu() - t_sender,
        "process_cpu_s": time.process_time() - t_proc,
    }
    if cb is not None:
        await asyncio.to_thread(cb.close, 5.0)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
