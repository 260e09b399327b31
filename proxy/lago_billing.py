"""LiteLLM callback that forwards usage events to the Lago webhook service.

Loaded by config.yaml (``litellm_settings: callbacks: lago_billing.proxy_handler_instance``).
The log methods only serialise + enqueue; a dedicated daemon thread with its own event loop
batches records and POSTs them to ``{WEBHOOK_SERVICE_URL}/webhooks/litellm``.  Undeliverable
records are spilled to an fsync'ed NDJSON spool and replayed once the service answers again
(at-least-once delivery: the webhook service dedupes on the payload ``id``).  See README.md.
"""
import asyncio
import atexit
import collections
import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from litellm.integrations.custom_logger import CustomLogger
except Exception:  # litellm not installed (unit tests)
    CustomLogger = object
try:  # a LiteLLM dependency: the cheapest client here (BENCHMARKS.md, the callback's CPU)
    import aiohttp
except Exception:
    aiohttp = None
try:
    import httpx
except Exception:
    httpx = None
try:
    import fcntl
except ImportError:  # non-POSIX: no cross-process spool locking
    fcntl = None

log = logging.getLogger("lago_billing")

STRIP_KEYS = ("messages", "response")  # prompt / completion bodies are never forwarded
MISCONFIG = {401, 403, 404, 405}  # keep the events, log loudly
RETRY = {408, 429} | MISCONFIG


def _env(name, default, cast=float):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return cast(raw)
    except ValueError:
        log.warning("lago_billing: invalid %s=%r, using %r", name, raw, default)
        return default


def _env_proxy(url):
    """The HTTP proxy that HTTP_PROXY / NO_PROXY give for url, or None: looked up once, because
    aiohttp's trust_env looks it up (and reads ~/.netrc) on every request, which tripled its CPU."""
    proxy = urllib.request.getproxies().get("http")
    host = urllib.parse.urlsplit(url).hostname or ""
    return None if not proxy or urllib.request.proxy_bypass(host) else proxy


@contextlib.contextmanager
def _flock(path, nonblock=False):
    """Exclusive advisory lock; with nonblock=True raises BlockingIOError if held elsewhere."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if fcntl:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if nonblock else 0))
        yield
    finally:
        os.close(fd)


class LagoBillingCallback(CustomLogger):
    def __init__(self, service_url=None, secret=None, batch_size=None, flush_interval=None,
                 queue_max=None, spool_path=None, timeout=None, max_backoff=None, spill_after=3,
                 linger=None, metrics_port=None, metrics_host=None, transport=None):
        with contextlib.suppress(Exception):
            super().__init__()
        base = service_url or os.environ.get("WEBHOOK_SERVICE_URL") or "http://webhook-service:3001"
        self.url = base.rstrip("/") + "/webhooks/litellm"
        self.secret = secret if secret is not None else os.environ.get("WEBHOOK_SECRET", "")
        self.batch_size = max(1, int(batch_size or _env("LAGO_BILLING_BATCH_SIZE", 100, int)))
        self.flush_interval = float(flush_interval or _env("LAGO_BILLING_FLUSH_INTERVAL", 0.5))
        # How long the first record after an idle period waits for others (0 = send at once): fewer
        # POSTs per call at low rates, for that much more lag.
        self.linger = max(0.0, float(linger if linger is not None else _env("LAGO_BILLING_LINGER_MS", 0.0)) / 1000)
        self.queue_max = max(1, int(queue_max or _env("LAGO_BILLING_QUEUE_MAX", 10000, int)))
        self.spool_path = spool_path or os.environ.get("LAGO_BILLING_SPOOL_PATH") or "/tmp/lago_billing_spool.ndjson"
        self.rejected_path = self.spool_path + ".rejected"
        self._replaying = self.spool_path + ".replaying"
        self.timeout = float(timeout or _env("LAGO_BILLING_TIMEOUT", 10.0))
        self.max_backoff = float(max_backoff or _env("LAGO_BILLING_MAX_BACKOFF", 30.0))
        self.spill_after = max(1, int(spill_after))  # failed rounds before the queue goes to disk
        self._queue = collections.deque()  # serialised JSON records (bytes); thread-safe ops only
        self._start_lock = threading.Lock()
        self._thread = self._loop = self._task = self._client = self._proxy = None
        # The HTTP client for POSTs: aiohttp (about a third of httpx's CPU per POST), else httpx,
        # else urllib in a thread. `transport` forces one (tests run all three).
        self.transport = transport or ("aiohttp" if aiohttp else "httpx" if httpx else "urllib")
        self._spill_pending = False
        self._idle = False  # the sender waits for records: _enqueue wakes it
        self._closing = False
        self._replay_check_at = 0.0  # next look for a spool left by us or another process
        self._spooled_since_check = False
        self._atexit = False
        self._warned = {}
        self._failures, self._retry_at, self._down_since, self._down_kind = 0, 0.0, 0.0, None
        self._last = (None, "")  # (status, detail) of the last failed POST
        self.delivered = self.spooled = self.rejected = self._burst_spooled = 0
        self._last_success = 0.0  # wall clock of the last 2xx from the service
        self._metrics_server = None
        port = int(metrics_port if metrics_port is not None else _env("LAGO_BILLING_METRICS_PORT", 0, int))
        self.metrics_host = metrics_host or os.environ.get("LAGO_BILLING_METRICS_HOST") or "0.0.0.0"
        if port > 0:
            self.start_metrics_server(port)

    # ---- LiteLLM hooks: enqueue only, never raise ----------------------------------------
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._enqueue(kwargs)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._enqueue(kwargs)

    def _enqueue(self, kwargs):
        try:
            payload = kwargs.get("standard_logging_object") if isinstance(kwargs, dict) else None
            if not isinstance(payload, dict):
                self._warn_throttled("payload", "lago_billing: callback without a standard_logging_object dict; event not billed")
                return
            record = {k: v for k, v in payload.items() if k not in STRIP_KEYS}
            self._queue.append(json.dumps(record, default=str, skipkeys=True, separators=(",", ":")).encode())
            self._ensure_started()
            n = len(self._queue)
            # Group commit: an idle sender is woken at once (one wake per idle period, not per call);
            # while a POST is in flight, records gather and go in the next one.
            if self._idle or n == self.batch_size:
                self._idle = False
                self._loop.call_soon_threadsafe(self._wake_up)
            if n > self.queue_max and not self._spill_pending:
                self._spill_pending = True
                self._loop.call_soon_threadsafe(self._spill)
        except Exception as exc:
            self._warn_throttled("enqueue", "lago_billing: could not queue a billing event: %r", exc)

    def _warn_throttled(self, key, msg, *args, every=60.0):
        now = time.monotonic()
        if now - self._warned.get(key, -every) >= every:
            self._warned[key] = now
            log.warning(msg, *args)

    # ---- metrics (GET /metrics on LAGO_BILLING_METRICS_PORT) ------------------------------
    def metrics_text(self):
        """What this process knows, in Prometheus' text format (read from other threads: plain
        ints and lengths, no lock needed)."""
        def size(path):
            try:
                return os.path.getsize(path)
            except OSError:
                return 0
        p = "lago_billing_callback_"
        out = []

        def metric(name, kind, help_, samples):
            out.append(f"# HELP {p}{name} {help_}\n# TYPE {p}{name} {kind}\n")
            out.extend(f"{p}{name}{labels} {value}\n" for labels, value in samples)

        metric("queue_records", "gauge", "Records in memory waiting to be sent to the webhook service",
               [("", len(self._queue))])
        metric("queue_max", "gauge", "LAGO_BILLING_QUEUE_MAX: records kept in memory before the oldest spill to disk",
               [("", self.queue_max)])
        metric("spool_bytes", "gauge", "Bytes of records spooled to disk, waiting for the webhook service",
               [("", size(self.spool_path) + size(self._replaying))])
        metric("rejected_bytes", "gauge", "Bytes of records the webhook service refused (4xx), kept for an operator",
               [("", size(self.rejected_path))])
        metric("records_total", "counter", "Records by outcome: delivered (2xx), spooled (written to disk), rejected",
               [('{outcome="delivered"}', self.delivered), ('{outcome="spooled"}', self.spooled),
                ('{outcome="rejected"}', self.rejected)])
        metric("consecutive_failures", "gauge", "Failed attempts to reach the webhook service since the last success",
               [("", self._failures)])
        metric("last_success_timestamp_seconds", "gauge", "When the webhook service last accepted records (0: never)",
               [("", round(self._last_success, 3))])
        return "".join(out)

    def start_metrics_server(self, port, host=None):
        """Serve GET /metrics on a daemon thread; returns the bound port (0 picks one), or None if the
        port is taken (e.g. several LiteLLM workers in one container: only the first serves)."""
        callback = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = callback.metrics_text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        try:
            server = ThreadingHTTPServer((host or self.metrics_host, port), Handler)
        except OSError as exc:
            log.warning("lago_billing: metrics not served on %s:%s: %r", host or self.metrics_host, port, exc)
            return None
        server.daemon_threads = True
        self._metrics_server = server
        threading.Thread(target=server.serve_forever, name="lago-billing-metrics", daemon=True).start()
        return server.server_address[1]

    def stop_metrics_server(self):
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

    # ---- public lifecycle --------------------------------------------------------------
    async def flush(self, timeout=5.0):
        """Send what is queued; whatever is not acknowledged within `timeout` is spooled."""
        try:
            if self._running():
                fut = asyncio.run_coroutine_threadsafe(self._flush(timeout), self._loop)
                await asyncio.wait_for(asyncio.wrap_future(fut), timeout + 2)
        except Exception as exc:
            log.warning("lago_billing: flush failed: %r", exc)

    async def shutdown(self, timeout=None):
        """Proxy shutdown: let LiteLLM run the callbacks still waiting in its logging queue (they
        enqueue here), then send what is queued and spool the rest. Never raises."""
        timeout = self.timeout if timeout is None else timeout
        try:
            from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

            await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout)
        except Exception as exc:  # litellm missing, or its queue did not drain in time
            log.warning("lago_billing: LiteLLM's logging queue not drained at shutdown: %r", exc)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.close, timeout)

    def close(self, timeout=5.0):
        """Stop the worker, send what is queued, spool the rest (also registered with atexit)."""
        if not self._running():
            return
        loop, thread = self._loop, self._thread
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(timeout), loop).result(timeout + 2)
        except Exception as exc:
            log.warning("lago_billing: close failed: %r", exc)
        with contextlib.suppress(Exception):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(2)

    def _running(self):
        return self._thread is not None and self._thread.is_alive()

    def _ensure_started(self):
        if self._running():
            return
        with self._start_lock:
            if self._running():
                return
            if not self.secret:
                log.warning("lago_billing: WEBHOOK_SECRET is not set; requests will be unauthenticated")
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(os.path.abspath(self.spool_path)), exist_ok=True)
            self._closing = False  # a closed callback that gets events again starts afresh
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._thread_main, name="lago-billing", daemon=True)
            self._thread.start()
            if not self._atexit:
                self._atexit = True
                atexit.register(self.close)

    def _thread_main(self):
        loop = self._loop
        asyncio.set_event_loop(loop)
        self._wake, self._lock = asyncio.Event(), asyncio.Lock()  # bound to the private loop
        self._task = loop.create_task(self._run())
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    # ---- worker (runs on the private loop) -----------------------------------------------
    def _wake_up(self):
        self._wake.set()

    async def _run(self):
        while not self._closing:  # checked too because asyncio.wait_for can swallow a cancel (3.11)
            # Wait only when there is nothing to send (or while backing off after failures). The
            # flag is published before the queue is looked at again, so a record queued in between
            # is either seen here or wakes us.
            if self._failures or not self._queue:
                self._idle = not self._failures
                if self._failures or not self._queue:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.flush_interval)
                self._idle = False
                if self.linger and not self._failures and 0 < len(self._queue) < self.batch_size:
                    # Linger: only a full batch (or a flush or close) wakes us before it ends.
                    self._wake.clear()
                    if not self._closing:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self.linger)
            self._wake.clear()
            try:
                self._spill()
                if self._failures and time.monotonic() < self._retry_at:
                    if self._failures >= self.spill_after:
                        self._spill(keep=0)
                    continue
                self._posted = False
                async with self._lock:
                    ok = await self._drain()
                if self._posted or not ok:  # an empty round proves nothing about the service
                    self._note_result(ok)
            except Exception as exc:
                self._warn_throttled("worker", "lago_billing: worker error: %r", exc)

    def _note_result(self, ok):
        status, detail = self._last
        if ok:
            if self._failures:
                log.info("lago_billing: webhook service reachable again after %d failed attempts (%.1fs down); "
                         "%d records were spooled meanwhile", self._failures,
                         time.monotonic() - self._down_since, self._burst_spooled)
            self._failures, self._down_kind, self._burst_spooled = 0, None, 0
            return
        if not self._failures:
            self._down_since = time.monotonic()
        self._failures += 1
        kind = "misconfig" if status in MISCONFIG else "down"
        if kind != self._down_kind:
            self._down_kind = kind
            if kind == "misconfig":
                log.error("lago_billing: webhook service answered HTTP %s at %s (check WEBHOOK_SECRET / "
                          "WEBHOOK_SERVICE_URL); keeping events and retrying: %s", status, self.url, detail)
            else:
                log.warning("lago_billing: webhook service unavailable at %s (%s); retrying with backoff, "
                            "events spill to %s after %d attempts", self.url, detail, self.spool_path, self.spill_after)
        if self._failures >= self.spill_after:
            self._spill(keep=0)
        cap = min(self.max_backoff, self.flush_interval * 2 ** min(self._failures, 30))
        self._retry_at = time.monotonic() + random.uniform(0, cap)

    async def _drain(self):
        """Replay the spool, then send the queue. False if the service is not accepting."""
        now = time.monotonic()
        if self._spooled_since_check or self._failures or now >= self._replay_check_at:
            # A spool is looked for at most every flush interval (another process may have left
            # one), at once after we spilled, and on every retry: not on every POST.
            self._replay_check_at, self._spooled_since_check = now + self.flush_interval, False
            try:
                if not await self._replay():
                    return False
            except BlockingIOError:
                pass  # another process is replaying this spool
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            rest = batch
            try:
                rest = await self._deliver(batch)
            finally:
                self._queue.extendleft(reversed(rest))
            if rest:
                return False
        return True

    async def _deliver(self, batch):
        """POST one batch; returns the records that must be retried later."""
        status, detail = await self._post(b"[" + b",".join(batch) + b"]")
        if status is not None and 200 <= status < 300:
            self.delivered += len(batch)
            self._last_success = time.time()
            return []
        if status is None or status < 400 or status >= 500 or status in RETRY:
            self._last = (status, f"HTTP {status}: {detail}" if status else detail)
            return batch
        if status == 413 and len(batch) > 1:
            mid = len(batch) // 2
            rest = await self._deliver(batch[:mid])
            return rest + batch[mid:] if rest else await self._deliver(batch[mid:])
        log.warning("lago_billing: webhook service rejected %d records with HTTP %s: %s; appended to %s",
                    len(batch), status, detail, self.rejected_path)
        self._append(self.rejected_path, batch)
        self.rejected += len(batch)
        return []

    async def _post(self, body):
        self._posted = True
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers["Authorization"] = f"Bearer {self.secret}"
        try:
            if self._client is None:
                self._client = self._new_client()
            if self.transport == "aiohttp":
                async with self._client.post(self.url, data=body, headers=headers, proxy=self._proxy) as resp:
                    return resp.status, (await resp.read())[:500].decode("utf-8", "replace")
            if self.transport == "httpx":
                resp = await self._client.post(self.url, content=body, headers=headers)
                return resp.status_code, resp.text[:500]
            return await asyncio.to_thread(self._post_urllib, body, headers)
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def _new_client(self):
        """The transport's client, made at the first POST (on the private loop). HTTP_PROXY and
        NO_PROXY apply to all three: httpx reads them itself, the others from _env_proxy."""
        if self.transport == "httpx":
            return httpx.AsyncClient(timeout=self.timeout)
        self._proxy = _env_proxy(self.url)
        if self.transport == "aiohttp":
            return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return urllib.request.build_opener(urllib.request.ProxyHandler({"http": self._proxy} if self._proxy else {}))

    def _post_urllib(self, body, headers):
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._client.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.read(500).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(500).decode("utf-8", "replace")

    # ---- spool -----------------------------------------------------------------------------
    def _append(self, path, lines):
        with _flock(self.spool_path + ".lock"), open(path, "ab") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())

    def _spill(self, keep=None):
        """Move the oldest queued records beyond `keep` (default: queue_max) to the spool."""
        self._spill_pending = False
        n = len(self._queue) - (self.queue_max if keep is None else keep)
        if n <= 0:
            return
        lines = [self._queue.popleft() for _ in range(n)]
        try:
            self._append(self.spool_path, lines)
        except Exception as exc:
            self._queue.extendleft(reversed(lines))
            self._warn_throttled("spool", "lago_billing: cannot write spool %s: %r", self.spool_path, exc)
            return
        self.spooled += n
        self._burst_spooled += n
        self._spooled_since_check = True
        if keep is None:
            self._warn_throttled("full", "lago_billing: queue full (%d); spilling to %s", self.queue_max, self.spool_path)

    async def _replay(self):
        """Send spooled records; a file is removed only once all its records got a 2xx (or were rejected)."""
        with _flock(self._replaying + ".lock", nonblock=True):
            while True:
                if not os.path.exists(self._replaying):
                    with _flock(self.spool_path + ".lock"):
                        if not os.path.exists(self.spool_path):
                            return True
                        os.replace(self.spool_path, self._replaying)
                if not await self._replay_file():
                    return False
                os.remove(self._replaying)

    async def _replay_file(self):
        keep, acked = [], False
        with open(self._replaying, "rb") as f:
            try:
                while True:
                    batch = keep = [ln.strip() for ln in itertools.islice(f, self.batch_size) if ln.strip()]
                    if not batch:
                        return True
                    good = self._valid(batch)
                    keep = await self._deliver(good) if good else []
                    if keep:
                        return False
                    acked = True
            finally:
                if keep and (acked or keep is not batch):  # drop what was acknowledged
                    tmp = self._replaying + ".tmp"
                    with open(tmp, "wb") as out:
                        out.write(b"".join(line + b"\n" for line in keep))
                        shutil.copyfileobj(f, out)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, self._replaying)

    def _valid(self, lines):
        good, bad = [], []
        for line in lines:
            try:
                json.loads(line)
                good.append(line)
            except ValueError:
                bad.append(line)
        if not bad:
            return lines
        log.warning("lago_billing: %d corrupt spool lines appended to %s", len(bad), self.rejected_path)
        self._append(self.rejected_path, bad)
        return good

    async def _shutdown(self, timeout):
        # A worker in the middle of a POST finishes it (cancelling it could send its records twice);
        # a waiting one returns at once. Only a worker still busy after half the timeout is cancelled.
        self._closing = True
        self._wake.set()
        _, busy = await asyncio.wait({self._task}, timeout=timeout / 2)
        if busy:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._flush(timeout / 2)
        if self._client is not None:
            with contextlib.suppress(Exception):
                if self.transport == "aiohttp":
                    await self._client.close()
                elif self.transport == "httpx":
                    await self._client.aclose()
            self._client = None

    async def _flush(self, timeout):
        async def locked_drain():
            async with self._lock:
                await self._drain()
        try:
            await asyncio.wait_for(locked_drain(), timeout)
        except Exception as exc:  # TimeoutError included
            log.debug("lago_billing: flush incomplete: %r", exc)
        n = len(self._queue)
        self._spill(keep=0)
        if n:
            log.warning("lago_billing: %d records not delivered at flush; spooled to %s", n, self.spool_path)


def install_shutdown_hook(callback, module_name="litellm.proxy.proxy_server"):
    """Run callback.shutdown() inside the proxy's own shutdown.

    On SIGTERM uvicorn drains requests, runs the app's lifespan shutdown, then re-raises the
    signal with the default handler, so the process dies without running atexit. LiteLLM's
    lifespan ends with ``await proxy_shutdown_event(...)`` looked up in its module at call time:
    wrapping that name is the one place our flush reliably runs before the process goes away.
    Returns True when installed (idempotent), False outside the proxy.
    """
    module = sys.modules.get(module_name)
    original = getattr(module, "proxy_shutdown_event", None)
    if original is None:
        return False
    if getattr(original, "_lago_billing", False):
        return True

    async def proxy_shutdown_event(*args, **kwargs):
        await callback.shutdown()
        return await original(*args, **kwargs)

    proxy_shutdown_event._lago_billing = True
    module.proxy_shutdown_event = proxy_shutdown_event
    return True


proxy_handler_instance = LagoBillingCallback()
with contextlib.suppress(Exception):
    install_shutdown_hook(proxy_handler_instance)
