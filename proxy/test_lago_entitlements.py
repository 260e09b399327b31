"""Unit tests for lago_entitlements against a real Redis (TEST_REDIS_URL, as the service's tests).

    cd proxy && TEST_REDIS_URL=redis://127.0.0.1:6379/14 python3 -m unittest -v test_lago_entitlements

The keys are written here the way src/entitlements/publisher.ts writes them; the end-to-end test
(test/e2e/entitlements.test.ts) runs this module in the real proxy against the real service.
"""
import asyncio
import json
import logging
import os
import socket
import types
import unittest
import uuid

os.environ["LAGO_ENTITLEMENTS_DISABLE_AUTOSTART"] = "1"
import lago_entitlements as le  # noqa: E402

try:
    import redis
except Exception:  # pragma: no cover - the venv has it
    redis = None

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeService:
    """Writes the keys the webhook service's publisher writes."""

    def __init__(self, r, prefix):
        self.r, self.p, self.v, self.epoch = r, prefix, 0, str(uuid.uuid4())
        self.meta = {"mode": "enforce", "fail_mode": "open", "attribution": ["end_user", "user_id", "team_id"],
                     "markup_percent": 0, "bill_cache_hits": False, "stale_after_seconds": 10}

    def publish(self, changes, full=False, **meta):
        self.meta.update(meta)
        self.v += 1
        if full:
            self.epoch = str(uuid.uuid4())
            self.r.delete(self.p + "entries", self.p + "changes")
        for c, e in changes.items():
            if e is None:
                self.r.hdel(self.p + "entries", c)
            else:
                self.r.hset(self.p + "entries", c, json.dumps(e))
            self.r.zadd(self.p + "changes", {c: self.v})
        self.r.set(self.p + "meta", json.dumps({**self.meta, "v": self.v, "epoch": self.epoch}))

    def beat(self, value=None):
        self.r.set(self.p + "heartbeat", str(value if value is not None else uuid.uuid4()))


def key(**kw):
    return types.SimpleNamespace(**{"user_id": None, "team_id": None, "org_id": None, "key_alias": None,
                                    "end_user_id": None, **kw})


def blocked(reason="wallet_exhausted", message="Your prepaid credit is used up."):
    return {"s": "blocked", "r": reason, "m": message}


class Base(unittest.TestCase):
    def setUp(self):
        self.assertIsNotNone(redis, "redis-py is needed (it ships with litellm[proxy])")
        self.r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.r.ping()  # a clear failure when Redis is not running
        self.prefix = f"test-entitlements:{uuid.uuid4()}:"
        self.svc = FakeService(self.r, self.prefix)
        self.clock = Clock()

    def tearDown(self):
        for k in self.r.scan_iter(self.prefix + "*"):
            self.r.delete(k)

    def hook(self, **kw):
        h = le.LagoEntitlements(redis_url=REDIS_URL, prefix=self.prefix, clock=self.clock, start=False, **kw)
        self.addCleanup(h.close)
        return h


class Attribution(unittest.TestCase):
    def test_same_customer_as_the_ledger(self):
        with open(os.path.join(FIXTURES, "attribution-cases.json")) as f:
            raw = f.read()
        import re
        raw = re.sub(r'"LONG(\d+)"', lambda m: json.dumps("x" * int(m.group(1))), raw)
        for c in json.loads(raw)["cases"]:
            with self.subTest(c["name"]):
                self.assertEqual(le.customer_of_payload(c["order"], c["payload"]), c["customer"])
                req = c["request"]
                data = {"model": "gpt-4o", "messages": []}
                if req["body_user"] is not None:
                    data["user"] = req["body_user"]
                self.assertEqual(le.customer_of_request(c["order"], key(**req["key"]), data), c["customer"])


class Decisions(Base):
    def test_blocked_customer_gets_402_with_the_message_others_are_served(self):
        self.svc.publish({"cust-a": blocked(message="Top up to continue.")})
        self.svc.beat()
        h = self.hook()
        h.poll_once()
        err = h.check(key(), {"user": "cust-a"})
        self.assertIsNotNone(err)
        self.assertEqual(err.code, "402")
        self.assertEqual(err.message, "Top up to continue.")
        self.assertEqual(err.type, "payment_required")
        self.assertEqual(err.headers["x-lago-entitlement-reason"], "wallet_exhausted")
        self.assertIsNone(h.check(key(), {"user": "cust-b"}))
        self.assertIsNone(h.check(key(user_id="default_user_id"), {}))  # nobody to bill: not ours to refuse
        if le.ProxyException is not None:  # in the proxy's virtualenv: LiteLLM's own OpenAI-style error
            self.assertIsInstance(err, le.ProxyException)
            self.assertEqual(err.to_dict()["message"], "Top up to continue.")

    def test_the_hook_raises_and_streams_are_refused_the_same_way(self):
        self.svc.publish({"cust-a": blocked()})
        self.svc.beat()
        h = self.hook()
        h.poll_once()
        for data in ({"user": "cust-a"}, {"user": "cust-a", "stream": True}):
            with self.assertRaises(Exception) as ctx:
                asyncio.run(h.async_pre_call_hook(key(), None, data, "acompletion"))
            self.assertEqual(str(getattr(ctx.exception, "code", "")), "402")
        self.assertIsNone(asyncio.run(h.async_pre_call_hook(key(), None, {"user": "cust-z"}, "acompletion")))

    def test_observe_mode_serves_counts_and_logs_once(self):
        self.svc.publish({"cust-a": blocked()}, mode="observe")
        self.svc.beat()
        h = self.hook()
        h.poll_once()
        with self.assertLogs("lago_entitlements", level="WARNING") as logs:
            for _ in range(5):
                self.assertIsNone(h.check(key(), {"user": "cust-a"}))
        self.assertEqual(len([m for m in logs.output if "would refuse" in m]), 1)
        h.poll_once()  # flushes the counts
        self.assertEqual(self.r.hget(self.prefix + "rejections", "observe:wallet_exhausted"), "5")

    def test_off_mode_does_nothing(self):
        self.svc.publish({"cust-a": blocked()}, mode="off")
        self.svc.beat()
        h = self.hook()
        h.poll_once()
        self.assertIsNone(h.check(key(), {"user": "cust-a"}))

    def test_changes_are_read_incrementally_and_a_new_epoch_reloads_everything(self):
        self.svc.publish({"cust-a": blocked(), "cust-b": blocked()})
        self.svc.beat()
        h = self.hook()
        h.poll_once()
        self.assertIsNotNone(h.check(key(), {"user": "cust-b"}))
        self.svc.publish({"cust-b": None, "cust-c": blocked("subscription_terminated", "Renew.")})
        self.svc.beat()
        h.poll_once()
        self.assertIsNone(h.check(key(), {"user": "cust-b"}))
        self.assertEqual(h.check(key(), {"user": "cust-c"}).message, "Renew.")
        self.assertIsNotNone(h.check(key(), {"user": "cust-a"}))
        self.svc.publish({"cust-d": blocked()}, full=True)
        self.svc.beat()
        h.poll_once()
        self.assertIsNone(h.check(key(), {"user": "cust-a"}))
        self.assertIsNotNone(h.check(key(), {"user": "cust-d"}))

    def test_own_finished_calls_are_spent_against_the_published_headroom(self):
        self.svc.publish({"cust-a": {"s": "allowed", "r": "wallet_exhausted", "m": "Out of credit.", "h": "1.5",
                                     "t": 100.0}}, markup_percent=20)
        self.svc.beat()
        h = self.hook()
        h.poll_once()

        def call(start, cost, **extra):
            slp = {"end_user": "cust-a", "startTime": start, "response_cost": cost, "status": "success",
                   "metadata": {}, **extra}
            asyncio.run(h.async_log_success_event({"standard_logging_object": slp}, None, None, None))

        call(99.0, 0.01)  # started before the ledger's newest call: already counted there
        call(101.0, 0.005)  # 0.5 cents × 1.2 = 0.6
        call(102.0, 0.01, status="failure")
        call(103.0, 0.01, cache_hit=True)  # cache hits are not billed (bill_cache_hits false)
        self.assertIsNone(h.check(key(), {"user": "cust-a"}))
        call(104.0, 0.0075)  # + 0.9 = 1.5 cents: the headroom is spent
        err = h.check(key(), {"user": "cust-a"})
        self.assertIsNotNone(err)
        self.assertEqual(err.message, "Out of credit.")
        # The service counted those calls: a new headroom, seen through the last one.
        self.svc.publish({"cust-a": {"s": "allowed", "r": "wallet_exhausted", "m": "Out of credit.", "h": "3",
                                     "t": 104.0}})
        self.svc.beat()
        h.poll_once()
        self.assertIsNone(h.check(key(), {"user": "cust-a"}))
        self.assertEqual(h.spent("cust-a", h.state.entries["cust-a"]), 0)


    def test_calls_finished_before_the_first_headroom_arrives_still_count(self):
        self.svc.publish({})
        self.svc.beat()
        h = self.hook()
        h.poll_once()
        slp = {"end_user": "cust-a", "startTime": 200.0, "response_cost": 0.02, "status": "success", "metadata": {}}
        asyncio.run(h.async_log_success_event({"standard_logging_object": slp}, None, None, None))
        # The service publishes a headroom from a ledger that does not hold that call yet.
        self.svc.publish({"cust-a": {"s": "allowed", "r": "wallet_exhausted", "m": "Out.", "h": "1.5", "t": 150.0}})
        self.svc.beat()
        h.poll_once()
        self.assertIsNotNone(h.check(key(), {"user": "cust-a"}))  # 2 cents spent of 1.5

    def test_calls_under_way_are_reserved_at_the_recent_average_cost(self):
        self.svc.publish({"cust-a": {"s": "allowed", "r": "wallet_exhausted", "m": "Out of credit.", "h": "2.5",
                                     "t": 100.0}})
        self.svc.beat()
        h = self.hook()
        h.poll_once()

        def finish(call_id, start, cost=0.008):
            slp = {"end_user": "cust-a", "startTime": start, "response_cost": cost, "status": "success", "metadata": {}}
            asyncio.run(h.async_log_success_event({"standard_logging_object": slp, "litellm_call_id": call_id},
                                                  None, None, None))

        self.assertIsNone(h.check(key(), {"user": "cust-a", "litellm_call_id": "c1"}))
        finish("c1", 101.0)  # 0.8 cents spent: the average is known now
        self.assertIsNone(h.check(key(), {"user": "cust-a", "litellm_call_id": "c2"}))  # 0.8 + 0
        # c2 is under way: 0.8 spent + 0.8 reserved = 1.6 < 2.5, still room for one more.
        self.assertIsNone(h.check(key(), {"user": "cust-a", "litellm_call_id": "c3"}))
        # 0.8 + 2 × 0.8 = 2.4 < 2.5: one more; then 0.8 + 3 × 0.8 = 3.2 ≥ 2.5: refused.
        self.assertIsNone(h.check(key(), {"user": "cust-a", "litellm_call_id": "c4"}))
        self.assertIsNotNone(h.check(key(), {"user": "cust-a", "litellm_call_id": "c5"}))
        # A call that failed upstream frees its reservation.
        asyncio.run(h.async_log_failure_event({"litellm_call_id": "c4"}, None, None, None))
        self.assertIsNone(h.check(key(), {"user": "cust-a", "litellm_call_id": "c6"}))


class Availability(Base):
    def test_fail_open_when_redis_is_unreachable_logged_once_and_counted(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        h = le.LagoEntitlements(redis_url=f"redis://127.0.0.1:{port}/0", clock=self.clock, start=False)
        self.addCleanup(h.close)
        with self.assertLogs("lago_entitlements", level="WARNING") as logs:
            for _ in range(3):
                h.poll_once()
                self.assertIsNone(h.check(key(), {"user": "cust-a"}))
        self.assertEqual(len(logs.output), 1)
        self.assertIn("failing open", logs.output[0])
        self.assertEqual(h._counts.get("fail_open:unavailable"), 3)

    def test_fail_closed_refuses_with_503_until_the_service_is_back(self):
        h = self.hook(fail_mode="closed")
        with self.assertLogs("lago_entitlements", level="WARNING"):
            h.poll_once()  # nothing published yet
        err = h.check(key(), {"user": "cust-a"})
        self.assertEqual(err.code, "503")
        self.assertEqual(err.headers["retry-after"], "5")
        self.svc.publish({}, fail_mode="closed")
        self.svc.beat()
        with self.assertLogs("lago_entitlements", level="INFO") as logs:
            h.poll_once()
        self.assertIn("available again", logs.output[-1])
        self.assertIsNone(h.check(key(), {"user": "cust-a"}))

    def test_a_heartbeat_that_stops_moving_means_the_service_is_gone(self):
        self.svc.publish({"cust-a": blocked()}, fail_mode="closed")
        self.svc.beat("1")
        h = self.hook()
        h.poll_once()
        self.assertEqual(h.check(key(), {"user": "cust-a"}).code, "402")
        self.clock.t += 5
        h.poll_once()  # same heartbeat, 5 s: still within stale_after (10 s)
        self.assertEqual(h.check(key(), {"user": "cust-b"}), None)
        self.clock.t += 6
        with self.assertLogs("lago_entitlements", level="WARNING") as logs:
            h.poll_once()
        self.assertIn("heartbeat has not moved", logs.output[0])
        self.assertEqual(h.check(key(), {"user": "cust-b"}).code, "503")  # the service's fail mode: closed
        self.svc.beat("2")
        h.poll_once()
        self.assertIsNone(h.check(key(), {"user": "cust-b"}))

    def test_counts_and_the_proxy_report_reach_redis(self):
        self.svc.publish({"cust-a": blocked("spending_limit", "Limit reached.")})
        self.svc.beat()
        h = self.hook()
        h.poll_once()
        for _ in range(3):
            h.check(key(), {"user": "cust-a"})
        h.poll_once()
        self.assertEqual(self.r.hget(self.prefix + "rejections", "enforce:spending_limit"), "3")
        report = json.loads(self.r.hget(self.prefix + "proxies", h._id))
        self.assertEqual(report["v"], 1)
        self.assertFalse(report["unavailable"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    unittest.main()
