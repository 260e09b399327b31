"""Unit tests for lago_billing (stdlib only; runs without litellm/httpx).

    cd proxy && python3 -m unittest -v test_lago_billing

Every test talks to a real ThreadingHTTPServer on 127.0.0.1 whose answers the test controls.
"""
import asyncio
import contextlib
import datetime
import json
import logging
import os
import socket
import tempfile
import threading
import sys
import time
import types
import unittest
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import lago_billing
from lago_billing import LagoBillingCallback

os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
SECRET = "s3cret"


class FakeWebhookService:
    """Records every POST; answers `statuses.pop(0)` if any, else `rule(records)`, else `status`,
    after `delay` seconds (a slow service, so that records queue up behind a POST in flight)."""

    def __init__(self, port=0):
        self.status, self.statuses, self.rule, self.error_body = 200, [], None, b"bad payload: missing field id"
        self.delay = 0.0
        self.requests, self.accepted, self.lock = [], [], threading.Lock()
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                records = json.loads(body)
                if svc.delay:
                    time.sleep(svc.delay)
                with svc.lock:
                    status = svc.statuses.pop(0) if svc.statuses else svc.rule(records) if svc.rule else svc.status
                    svc.requests.append({"path": self.path, "status": status, "headers": dict(self.headers),
                                         "records": records})
                    if 200 <= status < 300:
                        svc.accepted.extend(records)
                reply = b'{"ok":true}' if status < 300 else svc.error_body
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def ids(self):
        with self.lock:
            return sorted(r["id"] for r in self.accepted)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(i, **extra):
    return {
        "id": f"call-{i:03d}",
        "model": "gpt-4o-mini",
        "status": "success",
        "response_cost": 0.001,
        "startTime": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        "messages": [{"role": "user", "content": "secret prompt"}],
        "response": {"choices": [{"message": {"content": "secret completion"}}]},
        "metadata": {"user_api_key_hash": "abc", "usage_object": {
            "prompt_tokens": 10, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}}},
        **extra,
    }


def expected_ids(n, start=0):
    return [f"call-{i:03d}" for i in range(start, start + n)]


def count_lines(*paths):
    total = 0
    for p in paths:
        if os.path.exists(p):
            with open(p, "rb") as f:
                total += sum(1 for line in f if line.strip())
    return total


class LagoBillingTest(unittest.IsolatedAsyncioTestCase):
    """Runs with the default HTTP client (aiohttp where LiteLLM is installed); the subclasses at the
    end run the same tests with httpx and with urllib."""
    TRANSPORT = None

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.spool = os.path.join(tmp.name, "spool.ndjson")

    def server(self, port=0):
        svc = FakeWebhookService(port)
        self.addCleanup(svc.stop)
        return svc

    def make(self, url, **kw):
        args = dict(service_url=url, secret=SECRET, flush_interval=0.05, max_backoff=0.1, timeout=2,
                    spool_path=self.spool, transport=self.TRANSPORT)
        args.update(kw)
        cb = LagoBillingCallback(**args)
        self.addCleanup(cb.close, 1.0)
        return cb

    async def send(self, cb, ids, failure=False):
        for i in ids:
            hook = cb.async_log_failure_event if failure else cb.async_log_success_event
            await hook({"standard_logging_object": payload(i)}, None, None, None)

    async def wait_until(self, cond, timeout=4.0, msg="condition"):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {msg}")
            await asyncio.sleep(0.01)

    def spool_lines(self):
        return count_lines(self.spool, self.spool + ".replaying")

    # ---- tests ---------------------------------------------------------------------------
    async def test_batches_burst_and_gathers_while_a_post_is_in_flight(self):
        svc = self.server()
        cb = self.make(svc.url, batch_size=8, flush_interval=30)
        await self.send(cb, range(20))  # burst: capped at batch_size per request
        await self.wait_until(lambda: svc.ids() == expected_ids(20), msg="burst delivered")
        self.assertTrue(all(len(r["records"]) <= 8 for r in svc.requests))
        self.assertLessEqual(len(svc.requests), 5)
        # Group commit: the first record goes alone at once; what arrives while that POST is in
        # flight (a slow service) is gathered and goes in the next POSTs, batch_size at a time.
        svc.delay, before = 0.3, len(svc.requests)
        await self.send(cb, [20])
        await self.wait_until(lambda: len(svc.requests) > before or cb._idle is False and not cb._queue,
                              msg="first record taken")
        for i in range(21, 40):  # a trickle during the POST in flight
            await self.send(cb, [i])
            await asyncio.sleep(0.005)
        await self.wait_until(lambda: svc.ids() == expected_ids(40), msg="trickle delivered")
        sizes = [len(r["records"]) for r in svc.requests[before:]]
        self.assertEqual(sizes[0], 1, sizes)
        self.assertTrue(all(n <= 8 for n in sizes), sizes)
        self.assertLessEqual(len(sizes), 1 + 3 + 1, sizes)  # 19 gathered records: 3 POSTs of <= 8 (+1 slack)
        await self.wait_until(lambda: cb.delivered == 40, msg="acks counted")  # server logs before replying

    async def test_idle_record_is_sent_at_once_not_on_the_timer(self):
        svc = self.server()
        cb = self.make(svc.url, flush_interval=30)  # a timer-driven send would take 30 s
        await self.send(cb, [0])
        await self.wait_until(lambda: len(svc.ids()) == 1, timeout=5, msg="first record")
        for n, idle in ((2, 0.05), (3, 0.3), (4, 0.0)):  # arrive at different moments of the idle wait
            await asyncio.sleep(idle)
            await self.send(cb, [n - 1])
            await self.wait_until(lambda: len(svc.ids()) == n, timeout=5, msg=f"idle record {n}")
        self.assertEqual(len(svc.requests), 4)  # one POST per idle record

    async def test_linger_gathers_records_and_a_full_batch_ends_it(self):
        svc = self.server()
        cb = self.make(svc.url, batch_size=5, flush_interval=30, linger=400)
        await self.send(cb, [100])  # starts the sender (what is queued at its start goes at once)
        await self.wait_until(lambda: len(svc.ids()) == 1, timeout=5, msg="first record")
        await asyncio.sleep(0.05)
        svc.requests.clear()
        t0 = time.monotonic()
        await self.send(cb, [0])
        await asyncio.sleep(0.1)
        self.assertEqual(svc.requests, [])  # the first record waits for company
        await self.send(cb, [1, 2])
        await self.wait_until(lambda: len(svc.ids()) == 4, timeout=5, msg="lingering records")
        self.assertGreaterEqual(time.monotonic() - t0, 0.35)
        self.assertEqual([len(r["records"]) for r in svc.requests], [3])
        t1 = time.monotonic()
        await self.send(cb, range(3, 8))  # a full batch goes without waiting out the linger
        await self.wait_until(lambda: len(svc.ids()) == 9, timeout=5, msg="full batch")
        self.assertLess(time.monotonic() - t1, 0.3)
        self.assertEqual([len(r["records"]) for r in svc.requests], [3, 5])

    async def test_strips_content_keeps_usage_and_sends_auth(self):
        svc = self.server()
        cb = self.make(svc.url)
        kwargs = {"standard_logging_object": payload(1, weird=object(), when=datetime.date(2024, 5, 6)),
                  "messages": ["not forwarded"]}
        await cb.async_log_success_event(kwargs, object(), None, None)
        await self.wait_until(lambda: svc.ids() == ["call-001"])
        req = svc.requests[0]
        rec = req["records"][0]
        self.assertEqual(req["path"], "/webhooks/litellm")
        self.assertEqual(req["headers"]["Authorization"], f"Bearer {SECRET}")
        self.assertEqual(req["headers"]["Content-Type"], "application/json")
        self.assertNotIn("messages", rec)
        self.assertNotIn("response", rec)
        self.assertNotIn("secret prompt", json.dumps(req["records"]))
        self.assertEqual(rec["metadata"]["usage_object"], payload(1)["metadata"]["usage_object"])
        self.assertEqual(rec["startTime"], "2024-01-01 00:00:00+00:00")
        self.assertEqual(rec["when"], "2024-05-06")
        self.assertTrue(rec["weird"].startswith("<object object"))

    async def test_http_proxy_and_no_proxy_from_the_environment_apply(self):
        proxy = self.server()  # stands in for an HTTP proxy: it sees the absolute URL
        old = {k: os.environ.get(k) for k in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")}

        def restore():
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

        self.addCleanup(restore)
        os.environ["HTTP_PROXY"] = os.environ["http_proxy"] = proxy.url
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = "localhost"
        cb = self.make("http://webhook-service.invalid:3001")
        await self.send(cb, [1])
        await self.wait_until(lambda: proxy.ids() == ["call-001"], msg="the POST through the proxy")
        self.assertEqual(proxy.requests[0]["path"], "http://webhook-service.invalid:3001/webhooks/litellm")
        self.assertEqual(lago_billing._env_proxy("http://localhost:3001/webhooks/litellm"), None)
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = "webhook-service.invalid"
        self.assertEqual(lago_billing._env_proxy("http://webhook-service.invalid:3001/webhooks/litellm"), None)

    async def test_5xx_then_recovery_logged_once_per_burst(self):
        svc = self.server()
        svc.statuses = [503, 500, 502, 503, 504]
        cb = self.make(svc.url, batch_size=5)
        with self.assertLogs("lago_billing", level="INFO") as logs:
            await self.send(cb, range(10))
            await self.send(cb, range(10, 15), failure=True)
            await self.wait_until(lambda: svc.ids() == expected_ids(15), msg="delivery after 5xx")
            await self.wait_until(lambda: any("reachable again" in m for m in logs.output), msg="recovery log")
        warnings = [r for r in logs.records if r.levelno >= logging.WARNING]
        self.assertEqual(len(warnings), 1, logs.output)
        self.assertIn("503", warnings[0].getMessage())
        self.assertEqual(sum("reachable again" in m for m in logs.output), 1)
        self.assertEqual(len(svc.ids()), len(set(svc.ids())))  # none twice

    async def test_401_keeps_events_and_logs_error_once(self):
        svc = self.server()
        svc.statuses = [401, 401, 403, 401]
        cb = self.make(svc.url)
        with self.assertLogs("lago_billing", level="INFO") as logs:
            await self.send(cb, range(3))
            await self.wait_until(lambda: svc.ids() == expected_ids(3), msg="delivery after 401")
            await self.wait_until(lambda: any("reachable again" in m for m in logs.output))
        errors = [r for r in logs.records if r.levelno >= logging.WARNING]
        self.assertEqual(len(errors), 1, logs.output)
        self.assertEqual(errors[0].levelno, logging.ERROR)
        self.assertIn("WEBHOOK_SECRET", errors[0].getMessage())
        self.assertFalse(os.path.exists(self.spool + ".rejected"))

    async def test_service_down_spools_then_replays_and_clears(self):
        port = free_port()
        cb = self.make(f"http://127.0.0.1:{port}", spill_after=2)
        with self.assertLogs("lago_billing", level="INFO") as logs:
            await self.send(cb, range(10))
            await self.wait_until(lambda: self.spool_lines() == 10 and not cb._queue, msg="spooled")
            await asyncio.sleep(0.2)  # a few failed probes while down
            svc = self.server(port)
            await self.wait_until(lambda: svc.ids() == expected_ids(10), msg="replayed")
            await self.send(cb, range(10, 12))
            await self.wait_until(lambda: svc.ids() == expected_ids(12), msg="new records")
            await self.wait_until(lambda: any("reachable again" in m for m in logs.output), msg="recovery log")
        self.assertFalse(os.path.exists(self.spool))
        self.assertFalse(os.path.exists(self.spool + ".replaying"))
        self.assertEqual(sum(r.levelno >= logging.WARNING for r in logs.records), 1, logs.output)
        self.assertTrue(any("10 records were spooled" in m for m in logs.output), logs.output)

    async def test_queue_full_spills_instead_of_dropping(self):
        port = free_port()
        cb = self.make(f"http://127.0.0.1:{port}", queue_max=5, spill_after=1000)
        with self.assertLogs("lago_billing", level="INFO"):
            await self.send(cb, range(30))
            await self.wait_until(lambda: self.spool_lines() >= 25, msg="overflow spooled")
            self.assertLessEqual(len(cb._queue), 5 + 5)
            await asyncio.sleep(0.2)  # some failed attempts while down
            svc = self.server(port)
            await self.wait_until(lambda: svc.ids() == expected_ids(30), msg="all 30 delivered")

    async def test_422_goes_to_rejected_file_and_is_not_retried(self):
        svc = self.server()
        svc.status = 422
        cb = self.make(svc.url)
        rejected = self.spool + ".rejected"
        with self.assertLogs("lago_billing", level="WARNING") as logs:
            await self.send(cb, range(3))
            await self.wait_until(lambda: count_lines(rejected) == 3, msg="rejected file")
            n = len(svc.requests)
            await asyncio.sleep(0.3)
        self.assertEqual(len(svc.requests), n)  # not retried
        self.assertLessEqual(n, 3)
        self.assertTrue(any("422" in m and "bad payload" in m for m in logs.output), logs.output)
        with open(rejected) as f:
            self.assertEqual(sorted(json.loads(line)["id"] for line in f), expected_ids(3))
        self.assertEqual(cb.rejected, 3)

    async def test_413_splits_batch_in_halves(self):
        svc = self.server()
        svc.rule = lambda records: 413 if len(records) > 2 else 200
        svc.delay = 0.2  # the first record goes alone; the other 7 gather behind it
        cb = self.make(svc.url, batch_size=8, flush_interval=1.0)
        await self.send(cb, range(8))
        await self.wait_until(lambda: svc.ids() == expected_ids(8), msg="split delivery")
        # the worker may take the first record alone (group commit) or all 8 if it starts late
        self.assertTrue(any(r["status"] == 413 and len(r["records"]) > 2 for r in svc.requests), svc.requests)
        self.assertTrue(all(len(r["records"]) <= 2 for r in svc.requests if r["status"] == 200))
        self.assertFalse(os.path.exists(self.spool + ".rejected"))

    async def test_flush_and_close_send_queued_records(self):
        svc = self.server()
        svc.delay = 0.2  # records queue up behind the first POST: flush must wait for them all
        cb = self.make(svc.url, flush_interval=30)
        await self.send(cb, range(5))
        await cb.flush(2)
        self.assertEqual(svc.ids(), expected_ids(5))
        await self.send(cb, range(5, 8))
        cb.close(2)
        self.assertEqual(svc.ids(), expected_ids(8))
        await self.send(cb, [8])  # events after close start the worker again
        await self.wait_until(lambda: svc.ids() == expected_ids(9), msg="record after close")

    async def test_close_spools_when_service_down(self):
        cb = self.make(f"http://127.0.0.1:{free_port()}", flush_interval=30)
        with self.assertLogs("lago_billing", level="WARNING"):
            await self.send(cb, range(4))
            t0 = time.monotonic()
            cb.close(1.0)
        self.assertLess(time.monotonic() - t0, 3.5)
        self.assertEqual(self.spool_lines(), 4)

    async def test_spool_left_by_crashed_process_is_replayed(self):
        with open(self.spool, "wb") as f:
            for i in range(3):
                f.write(json.dumps({"id": f"call-{i:03d}"}).encode() + b"\n")
            f.write(b'{"id": "torn-wri\n')
        svc = self.server()
        cb = self.make(svc.url)
        with self.assertLogs("lago_billing", level="WARNING"):
            await self.send(cb, [3])  # first event starts the worker
            await self.wait_until(lambda: svc.ids() == expected_ids(4), msg="crash spool replay")
        self.assertEqual(count_lines(self.spool + ".rejected"), 1)
        self.assertEqual(self.spool_lines(), 0)

    async def test_replay_interrupted_midway_resends_nothing_twice(self):
        with open(self.spool, "wb") as f:
            for i in range(6):
                f.write(json.dumps({"id": f"call-{i:03d}"}).encode() + b"\n")
        svc = self.server()
        svc.statuses = [200, 503, 503]  # first spooled batch acked, then an outage mid-replay
        cb = self.make(svc.url, batch_size=2)
        with self.assertLogs("lago_billing", level="INFO"):
            await self.send(cb, [6])
            await self.wait_until(lambda: svc.ids() == expected_ids(7), msg="replay resumed")
        self.assertEqual(self.spool_lines(), 0)

    async def test_log_methods_never_raise(self):
        svc = self.server()
        cb = self.make(svc.url)
        circular = {"id": "loop"}
        circular["self"] = circular
        garbage = [None, {}, [], "x", object(), {"standard_logging_object": None},
                   {"standard_logging_object": "str"}, {"standard_logging_object": circular},
                   {"standard_logging_object": {(1, 2): "tuple key", "id": "call-777"}}]
        with self.assertLogs("lago_billing", level="WARNING"):
            for kw in garbage:
                await cb.async_log_success_event(kw, None, None, None)
                await cb.async_log_failure_event(kw, object(), "start", "end")
            await self.send(cb, [1])
            await self.wait_until(lambda: "call-001" in svc.ids(), msg="valid record after garbage")
        self.assertEqual(svc.ids().count("call-777"), 2)  # non-str key skipped, record kept

    async def test_shutdown_hook_flushes_before_the_proxy_shutdown(self):
        svc = self.server()
        svc.delay = 0.2  # the worker's first POST is still in flight when the shutdown starts
        cb = self.make(svc.url, flush_interval=30)
        calls = []

        async def proxy_shutdown_event(**kwargs):
            calls.append(("original", svc.ids(), kwargs))

        fake = types.ModuleType("fake_proxy_server")
        fake.proxy_shutdown_event = proxy_shutdown_event
        sys.modules["fake_proxy_server"] = fake
        self.addCleanup(sys.modules.pop, "fake_proxy_server")
        self.assertFalse(lago_billing.install_shutdown_hook(cb, "no_such_module"))
        self.assertTrue(lago_billing.install_shutdown_hook(cb, "fake_proxy_server"))
        self.assertTrue(lago_billing.install_shutdown_hook(cb, "fake_proxy_server"))  # idempotent
        await self.send(cb, range(3))
        with contextlib.suppress(AssertionError), self.assertLogs("lago_billing", level="WARNING"):
            await fake.proxy_shutdown_event(worker_heartbeat=None)
        # the events were sent before LiteLLM's own shutdown ran, and it still ran once
        self.assertEqual(calls, [("original", expected_ids(3), {"worker_heartbeat": None})])

    async def test_metrics_endpoint_follows_an_outage_the_spool_and_recovery(self):
        port = free_port()
        cb = self.make(f"http://127.0.0.1:{port}", spill_after=2, queue_max=1000)
        mport = cb.start_metrics_server(0, host="127.0.0.1")
        self.addCleanup(cb.stop_metrics_server)

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
                self.assertTrue(r.headers["Content-Type"].startswith("text/plain; version=0.0.4"))
                text = r.read().decode()
            values = {}
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    name, value = line.rsplit(" ", 1)
                    values[name] = float(value)
            return values

        m = scrape()
        self.assertEqual(m["lago_billing_callback_queue_records"], 0)
        self.assertEqual(m["lago_billing_callback_queue_max"], 1000)
        self.assertEqual(m["lago_billing_callback_last_success_timestamp_seconds"], 0)
        with self.assertLogs("lago_billing", level="INFO"):
            await self.send(cb, range(10))  # the service is down: retried, then spooled
            await self.wait_until(lambda: self.spool_lines() == 10 and cb.spooled == 10, msg="spooled")
            m = scrape()
            self.assertEqual(m['lago_billing_callback_records_total{outcome="spooled"}'], 10)
            self.assertGreater(m["lago_billing_callback_spool_bytes"], 0)
            self.assertGreaterEqual(m["lago_billing_callback_consecutive_failures"], 2)
            svc = self.server(port)
            await self.wait_until(lambda: svc.ids() == expected_ids(10), msg="replayed")
            svc.status = 422  # refused records are kept aside for an operator
            await self.send(cb, [10])
            await self.wait_until(lambda: cb.rejected == 1, msg="rejected")
        m = scrape()
        self.assertEqual(m['lago_billing_callback_records_total{outcome="delivered"}'], 10)
        self.assertEqual(m['lago_billing_callback_records_total{outcome="rejected"}'], 1)
        self.assertEqual(m["lago_billing_callback_spool_bytes"], 0)
        self.assertGreater(m["lago_billing_callback_rejected_bytes"], 0)
        self.assertEqual(m["lago_billing_callback_consecutive_failures"], 0)
        self.assertLess(abs(m["lago_billing_callback_last_success_timestamp_seconds"] - time.time()), 30)
        with self.assertRaises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/other", timeout=2)
        # The port is taken: a second process (another LiteLLM worker) logs it and carries on.
        other = self.make("http://127.0.0.1:1")
        with self.assertLogs("lago_billing", level="WARNING"):
            self.assertIsNone(other.start_metrics_server(mport, host="127.0.0.1"))

    def test_module_instance_and_env(self):
        self.assertIsInstance(lago_billing.proxy_handler_instance, LagoBillingCallback)
        env = {"WEBHOOK_SERVICE_URL": "http://svc:1/", "WEBHOOK_SECRET": "e", "LAGO_BILLING_BATCH_SIZE": "7",
               "LAGO_BILLING_FLUSH_INTERVAL": "0.25", "LAGO_BILLING_QUEUE_MAX": "9",
               "LAGO_BILLING_SPOOL_PATH": "/x/s", "LAGO_BILLING_TIMEOUT": "3", "LAGO_BILLING_MAX_BACKOFF": "oops"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with self.assertLogs("lago_billing", level="WARNING"):
                cb = LagoBillingCallback()
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        self.assertEqual((cb.url, cb.secret, cb.batch_size, cb.flush_interval, cb.queue_max, cb.spool_path,
                          cb.timeout, cb.max_backoff),
                         ("http://svc:1/webhooks/litellm", "e", 7, 0.25, 9, "/x/s", 3.0, 30.0))
        self.assertIsNone(cb._thread)  # nothing started at construction
        self.assertEqual(cb.transport, "aiohttp" if lago_billing.aiohttp else "httpx" if lago_billing.httpx
                         else "urllib")
        self.assertIsNone(cb._metrics_server)  # LAGO_BILLING_METRICS_PORT unset: no metrics server

    def test_metrics_port_from_env(self):
        port = free_port()
        env = {"LAGO_BILLING_METRICS_PORT": str(port), "LAGO_BILLING_METRICS_HOST": "127.0.0.1"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            cb = LagoBillingCallback(service_url="http://127.0.0.1:1", spool_path=self.spool)
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        self.addCleanup(cb.stop_metrics_server)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            self.assertIn("lago_billing_callback_spool_bytes 0", r.read().decode())


@unittest.skipUnless(lago_billing.httpx, "httpx not installed")
class LagoBillingHttpxTest(LagoBillingTest):
    TRANSPORT = "httpx"


class LagoBillingUrllibTest(LagoBillingTest):
    TRANSPORT = "urllib"


if __name__ == "__main__":
    unittest.main()
