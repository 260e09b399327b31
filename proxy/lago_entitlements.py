"""LiteLLM pre-call hook that refuses customers Lago says may not be served.

Loaded by config.yaml next to the billing callback::

    litellm_settings:
      callbacks: [lago_billing.proxy_handler_instance, lago_entitlements.proxy_handler_instance]

Before a call goes upstream (streaming or not), ``async_pre_call_hook`` finds the paying customer with
the billing rules (the service's CUSTOMER_ATTRIBUTION order, read from Redis; the same fields the
ledger reads from the StandardLoggingPayload) and looks it up in an in-process dict. A blocked
customer gets HTTP 402 with an OpenAI-style error body saying why and what to do. No network round
trip happens per call: a daemon thread polls Redis a few times a second for the decisions the webhook
service publishes (src/entitlements/publisher.ts documents the keys) and swaps in what changed.

Between two publications the hook also spends the customer's own finished calls (their
``response_cost``, priced with the service's markup) against the credit the service published as
left, so a customer running out is stopped after its in-flight calls, not after the next round trip
through the ledger.

When Redis or the service cannot be read (no heartbeat for ``stale_after_seconds``), the fail mode
applies: open (serve everyone, the default) or closed (refuse with 503). Each change of availability is
logged once; every rejection is counted in Redis for the service's metrics. See README.md.
"""
import json
import logging
import os
import socket
import threading
import time
from decimal import Decimal, InvalidOperation

try:
    from litellm.integrations.custom_logger import CustomLogger
except Exception:  # litellm not installed (unit tests)
    CustomLogger = object
try:
    from litellm.proxy._types import ProxyException
except Exception:  # litellm not installed (unit tests)
    ProxyException = None
try:
    import redis
except Exception:  # redis-py ships with litellm[proxy]
    redis = None

log = logging.getLogger("lago_entitlements")

DEFAULT_PREFIX = "lago-billing:entitlements:v1:"
PLACEHOLDER_USER = "default_user_id"  # LiteLLM's user for the master key: never a customer
DEFAULT_ATTRIBUTION = ("end_user", "user_id", "team_id")
MAX_LOCAL_SPENDS = 10000


class EntitlementError(Exception):
    """What the client receives when litellm is not importable (unit tests); else ProxyException."""

    def __init__(self, message, type, param, code, headers=None, openai_code=None):
        super().__init__(message)
        self.message, self.type, self.param, self.code = message, type, param, str(code)
        self.headers, self.openai_code = headers or {}, openai_code


def _error(status, message, type_, reason):
    cls = ProxyException or EntitlementError
    headers = {"x-lago-entitlement-reason": reason}
    if status == 503:
        headers["retry-after"] = "5"
    return cls(message=message, type=type_, param=None, code=status, headers=headers, openai_code=reason)


def _env(name, default, cast=float):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return cast(raw)
    except ValueError:
        log.warning("lago_entitlements: invalid %s=%r, using %r", name, raw, default)
        return default


def text(v, max_len=256):
    """src/ingest/litellm-payload.ts text(): a non-empty string (truncated), or a number as JS prints it."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        return v[:max_len] if v else None
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e21 else repr(v)
    return None


def resolve_customer(order, end_user, user_id, team_id, org_id, key_alias):
    """The service's resolveCustomer (src/ingest/litellm-payload.ts), field for field."""
    for source in order:
        if source == "end_user":
            v = end_user
        elif source == "user_id":
            v = None if user_id == PLACEHOLDER_USER else user_id
        elif source == "team_id":
            v = team_id
        elif source == "org_id":
            v = org_id
        elif source == "key_alias":
            v = key_alias
        else:
            v = None
        if v:
            return v
    return None


def customer_of_request(order, key, data):
    """The payer of a request about to be sent: LiteLLM logs end_user as the key's end user, else
    the body's ``user`` (litellm_logging.py), which the ledger reads before the key's own end user."""
    body_user = text(data.get("user")) if isinstance(data, dict) else None
    end_user = text(getattr(key, "end_user_id", None)) or body_user
    return resolve_customer(order, end_user, text(getattr(key, "user_id", None)), text(getattr(key, "team_id", None)),
                            text(getattr(key, "org_id", None)), text(getattr(key, "key_alias", None)))


def customer_of_payload(order, slp):
    """The payer of a finished call, from its StandardLoggingPayload, as the ledger finds it."""
    meta = slp.get("metadata") if isinstance(slp.get("metadata"), dict) else {}
    end_user = text(slp.get("end_user")) or text(meta.get("user_api_key_end_user_id"))
    return resolve_customer(order, end_user, text(meta.get("user_api_key_user_id")),
                            text(meta.get("user_api_key_team_id")), text(meta.get("user_api_key_org_id")),
                            text(meta.get("user_api_key_alias")))


class Entry:
    """One customer's published decision."""
    __slots__ = ("blocked", "reason", "message", "headroom", "through")

    def __init__(self, raw):
        self.blocked = raw.get("s") == "blocked"
        self.reason = raw.get("r") or ("manual" if self.blocked else None)
        self.message = raw.get("m") or "Access to this account is suspended."
        h = raw.get("h")
        try:
            self.headroom = Decimal(h) if h is not None else None
        except (InvalidOperation, TypeError):
            self.headroom = None
        t = raw.get("t")
        self.through = float(t) if isinstance(t, (int, float)) else None


class State:
    """An immutable view the hot path reads; the poller swaps in a new one."""
    __slots__ = ("mode", "fail_mode", "attribution", "markup", "bill_cache_hits", "entries", "version", "epoch")

    def __init__(self, mode="off", fail_mode=None, attribution=DEFAULT_ATTRIBUTION, markup=Decimal(0),
                 bill_cache_hits=False, entries=None, version=0, epoch=None):
        self.mode, self.fail_mode, self.attribution = mode, fail_mode, tuple(attribution)
        self.markup, self.bill_cache_hits = markup, bill_cache_hits
        self.entries, self.version, self.epoch = entries if entries is not None else {}, version, epoch


class _Spends:
    """A customer's own finished calls not yet in the ledger, and its calls under way."""
    __slots__ = ("through", "items", "total", "inflight", "recent")

    def __init__(self):
        self.through, self.items, self.total = None, [], Decimal(0)
        self.inflight = {}  # litellm_call_id -> monotonic time the call was let through
        self.recent = []  # the cost (cents) of its last finished calls, for the in-flight estimate


def _redis_url():
    url = os.environ.get("LAGO_ENTITLEMENTS_REDIS_URL")
    if url:
        return url
    host = os.environ.get("REDIS_HOST")
    if not host:
        return None
    password = os.environ.get("REDIS_PASSWORD") or ""
    auth = f":{password}@" if password else ""
    return f"redis://{auth}{host}:{os.environ.get('REDIS_PORT') or 6379}/0"


class LagoEntitlements(CustomLogger):
    def __init__(self, redis_url=None, poll_interval=None, fail_mode=None, client=None, clock=time.monotonic,
                 prefix=None, start=True):
        try:
            super().__init__()
        except Exception:
            pass
        self.redis_url = redis_url if redis_url is not None else _redis_url()
        # The service's ENTITLEMENT_REDIS_PREFIX.
        self.prefix = prefix or os.environ.get("LAGO_ENTITLEMENTS_REDIS_PREFIX") or DEFAULT_PREFIX
        self.poll_interval = float(poll_interval or _env("LAGO_ENTITLEMENTS_POLL_INTERVAL", 0.25))
        fm = (fail_mode or os.environ.get("LAGO_ENTITLEMENTS_FAIL_MODE") or "open").strip().lower()
        self.cold_fail_mode = "closed" if fm == "closed" else "open"
        env_order = os.environ.get("CUSTOMER_ATTRIBUTION")
        order = tuple(s.strip() for s in env_order.split(",") if s.strip()) if env_order else DEFAULT_ATTRIBUTION
        self.state = State(mode="unknown", attribution=order)
        self._client, self._clock = client, clock
        self._ok_until = 0.0  # monotonic: the hot path treats the data as current until then
        self._hb = None
        self._hb_changed = 0.0
        self._stale_after = 10.0
        self._available = None  # last availability logged (None: nothing logged yet)
        self._why = "not polled yet"
        self._counts = {}
        self._counts_lock = threading.Lock()
        self._local = {}
        self._recorded = 0
        self._observed = {}
        self._stop = threading.Event()
        self._thread = None
        self._last_poll = None
        self._id = f"{socket.gethostname()}:{os.getpid()}"
        self.polls = self.poll_errors = 0
        # Spend finished calls against the published headroom (off: the ledger alone decides).
        local = os.environ.get("LAGO_ENTITLEMENTS_LOCAL_SPEND", "on").strip().lower()
        self.local_spend = local not in ("0", "off", "false")
        # Benchmarks: CPU time of the hook, measured in the proxy itself and reported with the polls.
        self.profile = os.environ.get("LAGO_ENTITLEMENTS_PROFILE") == "1"
        self._prof = {"check_ns": 0, "check_n": 0, "spend_ns": 0, "spend_n": 0,
                      "clock_ns": self._clock_cost() if self.profile else 0}
        if start:
            self.start()

    # ---- LiteLLM hooks ------------------------------------------------------------------------
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        if self.profile:
            t0 = time.thread_time_ns()
            verdict = self.check(user_api_key_dict, data)
            self._prof["check_ns"] += time.thread_time_ns() - t0
            self._prof["check_n"] += 1
        else:
            verdict = self.check(user_api_key_dict, data)
        if verdict is not None:
            raise verdict
        return None

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        try:
            t0 = time.thread_time_ns() if self.profile else 0
            slp = kwargs.get("standard_logging_object") if isinstance(kwargs, dict) else None
            if isinstance(slp, dict) and self.local_spend:
                self.record_spend(slp, kwargs.get("litellm_call_id") or slp.get("litellm_call_id"))
            if self.profile:
                self._prof["spend_ns"] += time.thread_time_ns() - t0
                self._prof["spend_n"] += 1
        except Exception:  # never disturb LiteLLM's logging worker
            pass

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        """A call that failed upstream is no longer under way (it costs nothing)."""
        try:
            call_id = kwargs.get("litellm_call_id") if isinstance(kwargs, dict) else None
            if call_id:
                for rec in self._local.values():
                    if rec.inflight.pop(call_id, None) is not None:
                        break
        except Exception:
            pass

    @staticmethod
    def _clock_cost():
        """What one pair of thread_time_ns() calls costs (the profile subtracts it)."""
        n, t0 = 20000, time.thread_time_ns()
        for _ in range(n):
            time.thread_time_ns()
            time.thread_time_ns()
        return (time.thread_time_ns() - t0) // n

    # ---- the hot path -------------------------------------------------------------------------
    def check(self, key, data):
        """None to serve the call, else the exception to raise. Only dict lookups and arithmetic."""
        state = self.state
        if state.mode == "off":
            return None
        if self._clock() > self._ok_until:
            return self._unavailable(state)
        if state.mode not in ("enforce", "observe"):
            return None
        customer = customer_of_request(state.attribution, key, data)
        if customer is None:
            return None
        entry = state.entries.get(customer)
        if entry is None:
            return None
        if entry.blocked:
            return self._reject(state, customer, entry.reason, entry.message)
        if entry.headroom is not None and self.local_spend:
            # Spent: our finished calls the ledger had not seen; under way: calls let through and
            # not finished, each counted at the customer's recent average cost (a reservation).
            rec = self._local.get(customer)
            if rec is None:
                rec = self._local[customer] = _Spends()
            spent = self.spent(customer, entry)
            reserved = Decimal(len(rec.inflight)) * self._average(rec) if rec.inflight else 0
            if spent + reserved >= entry.headroom:
                return self._reject(state, customer, entry.reason, entry.message)
            call_id = data.get("litellm_call_id") if isinstance(data, dict) else None
            if call_id and state.mode == "enforce":
                now = self._clock()
                if len(rec.inflight) > 1000:  # calls whose end never reached a callback
                    rec.inflight = {k: t for k, t in rec.inflight.items() if now - t < 600}
                rec.inflight[call_id] = now
        return None

    @staticmethod
    def _average(rec):
        return sum(rec.recent, Decimal(0)) / len(rec.recent) if rec.recent else Decimal(0)

    def _unavailable(self, state):
        mode = state.fail_mode or self.cold_fail_mode
        if mode == "closed":
            self._count("enforce:unavailable")
            return _error(503, "Billing status is unavailable right now, so calls are not accepted. "
                               "Retry in a few seconds.", "service_unavailable", "unavailable")
        self._count("fail_open:unavailable")
        return None

    def _reject(self, state, customer, reason, message):
        if state.mode == "observe":
            self._count(f"observe:{reason}")
            now = self._clock()
            if now - self._observed.get(customer, -1e9) >= 60:
                self._observed[customer] = now
                log.warning("lago_entitlements: would refuse %s (%s) — ENFORCEMENT=observe", customer, reason)
            return None
        self._count(f"enforce:{reason}")
        return _error(402, message, "payment_required", reason)

    def _count(self, key):
        with self._counts_lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def spent(self, customer, entry):
        """Our own finished calls that started after the ledger's newest call for the customer."""
        rec = self._local.get(customer)
        if rec is None:
            return 0
        if rec.through != entry.through:
            if entry.through is not None:
                cutoff = entry.through + 0.0005  # the ledger keeps start times to the millisecond
                rec.items = [(s, c) for s, c in rec.items if s > cutoff]
                rec.total = sum((c for _, c in rec.items), Decimal(0))
            rec.through = entry.through
        return rec.total

    def record_spend(self, slp, call_id=None):
        state = self.state
        if state.mode not in ("enforce", "observe"):
            return
        customer = customer_of_payload(state.attribution, slp)
        rec = self._local.get(customer) if customer else None
        if rec is not None and call_id:
            rec.inflight.pop(call_id, None)
        # Recorded even for a customer with no published headroom yet: the service may be about to
        # publish one computed from a ledger that does not hold this call.
        if not customer or slp.get("status") == "failure":
            return
        if slp.get("cache_hit") in (True, "True", "true") and not state.bill_cache_hits:
            return
        try:
            cost = Decimal(str(slp.get("response_cost") or 0))
            start = float(slp.get("startTime"))
        except (InvalidOperation, TypeError, ValueError):
            return
        if cost <= 0:
            return
        if rec is None:
            rec = self._local[customer] = _Spends()
        cents = cost * (100 + state.markup)
        rec.items.append((start, cents))
        rec.total += cents
        rec.recent.append(cents)
        if len(rec.recent) > 20:
            rec.recent.pop(0)
        if len(rec.items) > MAX_LOCAL_SPENDS:
            rec.total -= rec.items.pop(0)[1]
        self._recorded += 1
        if self._recorded % 1000 == 0:
            self._sweep(state, start)

    def _sweep(self, state, now):
        """Forgets calls of customers with nothing to watch once the ledger must hold them (a minute)."""
        for customer, rec in list(self._local.items()):
            if customer in state.entries:
                continue
            if rec.items and rec.items[0][0] < now - 60:
                rec.items = [(t, c) for t, c in rec.items if t >= now - 60]
                rec.total = sum((c for _, c in rec.items), Decimal(0))
            if not rec.items and not rec.inflight:
                del self._local[customer]

    # ---- the poller ----------------------------------------------------------------------------
    def start(self):
        """One synchronous poll (a cold proxy knows the state before its first call), then the thread."""
        if self._thread is not None:
            return
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="lago-entitlements", daemon=True)
        self._thread.start()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def _run(self):
        while not self._stop.wait(self.poll_interval):
            self.poll_once()

    def _redis(self):
        if self._client is None:
            if not self.redis_url:
                raise RuntimeError("no Redis configured: set LAGO_ENTITLEMENTS_REDIS_URL (the webhook "
                                   "service's REDIS_URL)")
            if redis is None:
                raise RuntimeError("the redis package is not installed")
            self._client = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1,
                                                decode_responses=True)
        return self._client

    def poll_once(self):
        """Reads what changed, reports counts; never raises."""
        try:
            self._poll()
            self.polls += 1
        except Exception as exc:
            self.poll_errors += 1
            self._note(False, f"{type(exc).__name__}: {exc}")

    def _poll(self):
        r, P = self._redis(), self.prefix
        with self._counts_lock:
            counts, self._counts = self._counts, {}
        pipe = r.pipeline(transaction=False)
        pipe.get(P + "meta")
        pipe.get(P + "heartbeat")
        for k, n in counts.items():
            pipe.hincrby(P + "rejections", k, n)
        now = self._clock()
        age = None if self._last_poll is None else round(now - self._last_poll, 3)
        report = {"at": time.time(), "age": age, "v": self.state.version, "unavailable": now > self._ok_until}
        if self.profile:
            report["profile"] = dict(self._prof)
        pipe.hset(P + "proxies", self._id, json.dumps(report))
        try:
            res = pipe.execute()
        except Exception:
            with self._counts_lock:  # not reported: keep them for the next poll
                for k, n in counts.items():
                    self._counts[k] = self._counts.get(k, 0) + n
            raise
        meta_raw, hb = res[0], res[1]
        if meta_raw is None:
            self._note(False, "no entitlements in Redis (is the webhook service running with ENFORCEMENT set "
                              "and the same Redis as LAGO_ENTITLEMENTS_REDIS_URL?)")
            return
        meta = json.loads(meta_raw)
        self._stale_after = float(meta.get("stale_after_seconds") or 10)
        if hb != self._hb:
            self._hb, self._hb_changed = hb, now
        old = self.state
        if meta.get("epoch") != old.epoch:
            entries = {c: Entry(json.loads(e)) for c, e in r.hgetall(P + "entries").items()}
        elif int(meta.get("v") or 0) > old.version:
            members = r.zrangebyscore(P + "changes", f"({old.version}", "+inf")
            entries = dict(old.entries)
            if members:
                for c, e in zip(members, r.hmget(P + "entries", members)):
                    if e is None:
                        entries.pop(c, None)
                    else:
                        entries[c] = Entry(json.loads(e))
        else:
            entries = old.entries
        try:
            markup = Decimal(str(meta.get("markup_percent") or 0))
        except InvalidOperation:
            markup = Decimal(0)
        self.state = State(mode=meta.get("mode") or "off", fail_mode=meta.get("fail_mode"),
                           attribution=meta.get("attribution") or DEFAULT_ATTRIBUTION, markup=markup,
                           bill_cache_hits=bool(meta.get("bill_cache_hits")), entries=entries,
                           version=int(meta.get("v") or 0), epoch=meta.get("epoch"))
        self._last_poll = now
        fresh_until = self._hb_changed + self._stale_after
        self._ok_until = fresh_until
        if now > fresh_until:
            self._note(False, f"the webhook service's heartbeat has not moved for {self._stale_after:.0f} s")
        else:
            self._note(True, "")

    def _note(self, ok, why):
        """Logs each change of availability once (never per call)."""
        if ok == self._available:
            return
        self._available, self._why = ok, why
        if ok:
            log.info("lago_entitlements: entitlements available again (%d customers with a decision, mode %s)",
                     len(self.state.entries), self.state.mode)
        else:
            mode = self.state.fail_mode or self.cold_fail_mode
            log.warning("lago_entitlements: entitlements unavailable (%s); failing %s: %s", why, mode,
                        "every call is served" if mode == "open" else "calls are refused with 503")


proxy_handler_instance = LagoEntitlements(start=os.environ.get("LAGO_ENTITLEMENTS_DISABLE_AUTOSTART") != "1")
