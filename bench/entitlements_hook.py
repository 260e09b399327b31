"""CPU per call of the entitlement pre-call hook in isolation (proxy/lago_entitlements.py check()).

    LITELLM_LOCAL_MODEL_COST_MAP=True .venv/litellm/bin/python bench/entitlements_hook.py

With LiteLLM's own UserAPIKeyAuth and a request body as the proxy passes them, for a customer that
is not in the cache, one that is blocked, and one with a headroom to spend against (plus the success
callback that records a finished call), each with 100 and 100,000 published customers. Thread CPU
time (time.thread_time_ns) over 200,000 calls, the cost of the clock itself subtracted. Compare with
bench/litellm.ts --entitlements (section 3b), which measures the same code inside the loaded proxy.
"""
import asyncio
import os
import sys
import time
from decimal import Decimal

os.environ["LAGO_ENTITLEMENTS_DISABLE_AUTOSTART"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proxy"))
import lago_entitlements as le  # noqa: E402
from litellm.proxy._types import UserAPIKeyAuth  # noqa: E402

N = 200_000


def measure(fn):
    t0 = time.thread_time_ns()
    for _ in range(1000):
        time.thread_time_ns()
    clock = (time.thread_time_ns() - t0) / 1000
    t0 = time.thread_time_ns()
    for _ in range(N):
        fn()
    return ((time.thread_time_ns() - t0) / N - clock / 2) / 1000


def main():
    key = UserAPIKeyAuth(api_key="hashed", user_id="default_user_id", team_id=None)
    print(f"LiteLLM UserAPIKeyAuth, {N:,} calls per case; µs of thread CPU per call")
    print(f"{'published customers':>20} {'unknown':>9} {'blocked':>9} {'headroom':>9} {'success callback':>17}")
    for size in (100, 100_000):
        h = le.LagoEntitlements(redis_url="redis://127.0.0.1:1/0", start=False)
        entries = {f"cust-{i}": le.Entry({"s": "allowed", "r": "wallet_exhausted", "m": "m", "h": "1000000", "t": 1.0})
                   for i in range(size)}
        entries["cust-blocked"] = le.Entry({"s": "blocked", "r": "wallet_exhausted", "m": "Top up."})
        h.state = le.State(mode="enforce", entries=entries, version=1, epoch="e")
        h._ok_until = float("inf")
        unknown = {"model": "gpt-4o", "messages": [], "user": "nobody", "litellm_call_id": "x"}
        blocked = {"model": "gpt-4o", "messages": [], "user": "cust-blocked", "litellm_call_id": "x"}
        head = {"model": "gpt-4o", "messages": [], "user": "cust-7", "litellm_call_id": "x"}
        slp = {"end_user": "cust-7", "startTime": 2.0, "response_cost": 0.008, "status": "success", "metadata": {}}
        kwargs = {"standard_logging_object": slp, "litellm_call_id": "x"}
        loop = asyncio.new_event_loop()
        cb = h.async_log_success_event(kwargs, None, None, None)
        cb.close()
        row = [
            measure(lambda: h.check(key, unknown)),
            measure(lambda: h.check(key, blocked)),
            measure(lambda: h.check(key, head)),
            measure(lambda: h.record_spend(slp, "x")),
        ]
        loop.close()
        print(f"{size:>20,} " + " ".join(f"{v:>9.2f}" for v in row[:3]) + f" {row[3]:>17.2f}")


if __name__ == "__main__":
    main()
