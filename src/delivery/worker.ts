import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import type { Sql } from "../db/pool.ts";
import { query } from "../db/queries.ts";
import type { BatchOutcome, LagoClient, LagoEventBody } from "../lago/client.ts";
import { LagoUnavailableError, type MappingKey, type SubscriptionResolver } from "../lago/subscriptions.ts";
import { type Metrics, statusClass } from "../metrics.ts";
import { backoffMs, giveUpReason, type RetryPolicy } from "./retry-policy.ts";
import type { Sink } from "./sink.ts";

// Hot statements are prepared once per connection: no parse and plan per batch.
const PREPARED = { prepare: true } as const;

/** A connection reserved for one claim: its transaction holds the claimed events' row locks. */
type Conn = Awaited<ReturnType<Sql["reserve"]>>;

interface ClaimedEvent {
  id: string;
  transaction_id: string;
  customer_id: string;
  code: string;
  event_timestamp: number;
  /** jsonb as text: spliced into the request body as it is. */
  properties: string;
  precise_total_amount_cents: string | null;
  external_subscription_id: string | null;
  attempts: number;
  created_at: Date;
  /** next_attempt_at as PostgreSQL prints it (exact): where the dispatcher's next claim starts. */
  cursor_at: string;
}

interface Attempt {
  success: boolean;
  status: number | null;
  count: number;
  ms: number;
  error: string | null;
  /** Unix seconds when the answer came (webhook_logs.sent_at). */
  at?: number;
}

/**
 * What a claim's batches decided, kept in memory until the last of them is done and then written
 * in one statement: delivered events (the common case, as two arrays), other settlements, attempts.
 */
class Outcomes {
  readonly delivered: { id: string; status: number }[] = [];
  readonly rows: Settlement[] = [];
  readonly attempts: Attempt[] = [];
  settle(rows: Settlement[], attempt: Attempt | null): void {
    this.rows.push(...rows);
    if (attempt) this.attempts.push(attempt);
  }
}

interface Settlement {
  id: string;
  state: "pending" | "delivered" | "failed" | "unbillable";
  delay_s?: number;
  error?: string | null;
  status?: number | null;
  duplicate?: boolean;
  uncount?: number;
}

export interface WorkerOptions {
  /**
   * The delivery pool: one connection per claim in flight (at most LAGO_WORKER_CONCURRENCY), plus the
   * dispatcher's. Its sessions should set idle_in_transaction_session_timeout (service.ts): that is
   * what releases the events of a worker that hangs mid-batch.
   */
  sql: Sql;
  client: LagoClient;
  resolver: SubscriptionResolver;
  sink: Sink;
  log: Logger;
  metrics?: Metrics;
  batchSize: number;
  concurrency: number;
  rateLimitRps: number;
  retry: RetryPolicy;
  pollIntervalMs?: number;
  /**
   * LAGO_WORKER_LINGER_MS: how long the first event after an idle period waits for others before
   * the claim (0 = none). CPU per event against lag, for deployments at low steady rates.
   */
  lingerMs?: number;
  workerId?: string;
}

/** A token bucket for the client-side request cap (LAGO_RATE_LIMIT_RPS). */
class RateLimiter {
  #tokens: number;
  #last = Date.now();
  #rate: number;
  constructor(rate: number) {
    this.#rate = rate;
    this.#tokens = rate > 0 ? Math.max(1, rate / 10) : Number.POSITIVE_INFINITY;
  }
  #refill(): void {
    if (this.#rate <= 0) return;
    const now = Date.now();
    this.#tokens = Math.min(
      Math.max(1, this.#rate / 10),
      this.#tokens + ((now - this.#last) / 1000) * this.#rate,
    );
    this.#last = now;
  }
  /** Takes up to n tokens; returns how many it got. */
  take(n: number): number {
    this.#refill();
    const got = Math.min(n, Math.floor(this.#tokens));
    this.#tokens -= got;
    return got;
  }
  refund(n: number): void {
    if (this.#rate > 0) this.#tokens += n;
  }
  /** Lowers the rate (never raises it): Lago told us its limit. */
  capAt(rate: number): boolean {
    if (rate <= 0 || (this.#rate > 0 && this.#rate <= rate)) return false;
    this.#rate = rate;
    this.#tokens = Math.min(this.#tokens, 1);
    return true;
  }
  msUntilToken(): number {
    this.#refill();
    return this.#rate <= 0 || this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) / this.#rate) * 1000);
  }
}

/** Index-keyed 422 details: which events Lago already has, which it refuses and why. */
function readRejection(details: Record<string, unknown>, size: number) {
  const duplicate = new Set<number>();
  const invalid = new Map<number, string>();
  for (const [key, value] of Object.entries(details)) {
    const index = Number(key);
    if (!Number.isInteger(index) || index < 0 || index >= size) continue;
    const text = typeof value === "string" ? value : JSON.stringify(value);
    const fields = typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
    const fieldNames = Object.keys(fields);
    const onlyDuplicate =
      fieldNames.length === 1 &&
      Array.isArray(fields.transaction_id) &&
      fields.transaction_id.every((v) => v === "value_already_exist");
    if (onlyDuplicate) duplicate.add(index);
    else invalid.set(index, `Lago rejected the event: ${text}`.slice(0, 1000));
  }
  return { duplicate, invalid };
}

/**
 * The delivery worker: a dispatcher keeps up to LAGO_WORKER_CONCURRENCY batches of LAGO_BATCH_SIZE
 * in flight. Each batch is one transaction on its own connection: it locks its events
 * (FOR UPDATE SKIP LOCKED), sends them, settles them and commits, so each event is written once per
 * delivery, and any number of workers in any number of processes never send one event at the same
 * time. It wakes on NOTIFY (or a local wake) and polls as a fallback. Batching works like group
 * commit: an event arriving while nothing is in flight goes at once; while batches are in flight and
 * the last claim took everything due, new events wait for a batch to finish and go together.
 */
export class DeliveryWorker {
  readonly #o: Required<Omit<WorkerOptions, "metrics">> & Pick<WorkerOptions, "metrics">;
  readonly #limiter: RateLimiter;
  /** Claims being delivered (each a transaction holding its events' row locks). */
  readonly #claims = new Set<Promise<void>>();
  /** Batches in flight over all claims: what LAGO_WORKER_CONCURRENCY bounds. */
  #busy = 0;
  #running = false;
  #stopped: Promise<void> | null = null;
  #wakeResolve: (() => void) | null = null;
  #woken = false;
  /** The last claim took every due event: the next waits for news (or the poll interval). */
  #drained = false;
  /** Events committed locally since the last claim (a full batch is claimed without waiting). */
  #hint = 0;
  /** Something may have become due since the last claim: a local commit, a NOTIFY, a recovery. */
  #news = true;
  /** A batch finished since the last claim: what gathered behind it may go. */
  #slotFreed = false;
  #lastClaimAt = 0;
  /** When the first news since the last claim came (the linger counts from it). */
  #newsAt = 0;
  /** The last event claimed while batches are in flight: the next claim starts after it. */
  #cursor: { at: string; id: string } | null = null;
  #unlisten: (() => Promise<void>) | null = null;
  #lastSuccess: Date | null = null;
  #lastFailure: { at: Date; error: string } | null = null;
  /** LAGO_BATCH_SIZE until Lago answers too_many_events; then halved, and remembered. */
  #batchSize: number;
  #batchSizeReason: string | null = null;

  constructor(opts: WorkerOptions) {
    this.#o = {
      pollIntervalMs: 1000,
      lingerMs: 0,
      workerId: `${process.pid}-${randomUUID().slice(0, 8)}`,
      ...opts,
    } as Required<Omit<WorkerOptions, "metrics">> & Pick<WorkerOptions, "metrics">;
    this.#limiter = new RateLimiter(opts.rateLimitRps);
    this.#batchSize = opts.batchSize;
    opts.metrics?.batchSize.set(opts.batchSize);
  }

  /** This worker's id: webhook_logs.worker_id, and the payload of its own process's NOTIFYs. */
  get id(): string {
    return this.#o.workerId;
  }

  /** Events per request now, and why it is below LAGO_BATCH_SIZE (null when it is not). */
  get batchSize(): { effective: number; configured: number; reason: string | null } {
    return { effective: this.#batchSize, configured: this.#o.batchSize, reason: this.#batchSizeReason };
  }

  /** Every batch slot is taken: events committed now wait for one to finish. */
  get saturated(): boolean {
    return this.#busy >= this.#o.concurrency;
  }

  get lastSuccess(): Date | null {
    return this.#lastSuccess;
  }

  get lastFailure(): { at: Date; error: string } | null {
    return this.#lastFailure;
  }

  /** Makes the dispatcher look for due events now (after a local commit of `events`, or a NOTIFY). */
  wake(events = 0): void {
    this.#hint += events;
    if (!this.#news) this.#newsAt = Date.now();
    this.#news = true;
    this.#nudge();
  }

  /** Lets the dispatcher look at its state again (without news, it may go back to sleep). */
  #nudge(): void {
    this.#woken = true;
    this.#wakeResolve?.();
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      // A NOTIFY whose payload is our own id came from this process's ingest, which woke us directly.
      const sub = await this.#o.sql.listen("lago_events", (payload) => {
        if (payload !== this.#o.workerId) this.wake();
      });
      this.#unlisten = sub.unlisten;
    } catch (err) {
      this.#o.log.warn({ err }, "LISTEN failed; the worker polls instead");
    }
    this.#stopped = this.#loop();
  }

  /** Stops claiming, lets in-flight batches settle, and returns. */
  async stop(): Promise<void> {
    this.#running = false;
    this.wake();
    await this.#stopped;
    while (this.#claims.size > 0) await Promise.allSettled([...this.#claims]);
    await this.#unlisten?.().catch(() => undefined);
  }

  #sleep(ms: number): Promise<void> {
    if (this.#woken || !this.#running) {
      this.#woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.#wakeResolve = null;
        self.#woken = false;
        resolve();
      }
      this.#wakeResolve = done;
    });
  }

  async #loop(): Promise<void> {
    const { sink, concurrency, log } = this.#o;
    while (this.#running) {
      const batchSize = this.#batchSize;
      try {
        const pause = sink.waitMs();
        if (pause > 0) {
          await this.#sleep(Math.min(pause, this.#o.pollIntervalMs * 5));
          continue;
        }
        // After a pause only one probe batch goes out; when it succeeds the sink is ok again.
        const free = sink.isOk ? concurrency - this.#busy : this.#busy === 0 ? 1 : 0;
        if (free <= 0) {
          await this.#sleep(this.#o.pollIntervalMs); // a freed slot wakes it
          continue;
        }
        // The last claim took everything due: claim again only when something new may be due, or
        // when the poll interval has passed (backoffs ending, a crashed worker's rows, a lost
        // NOTIFY), never just because a batch finished. Group commit: while batches are in
        // flight, what arrives waits for one of them to finish (or for a full batch).
        if (this.#drained && sink.isOk) {
          const wait = this.#lastClaimAt + this.#o.pollIntervalMs - Date.now();
          const ready = this.#news && (this.#busy === 0 || this.#slotFreed || this.#hint >= batchSize);
          if (wait > 0 && !ready) {
            await this.#sleep(wait);
            continue;
          }
          // Linger: after an idle period the first event waits a little for company (a full
          // batch ends the wait). Behind batches in flight nothing lingers: they are the wait.
          const linger =
            ready && this.#busy === 0 && this.#hint < batchSize
              ? this.#newsAt + this.#o.lingerMs - Date.now()
              : 0;
          if (linger > 0) {
            await this.#sleep(linger);
            continue;
          }
        }
        const slots = this.#limiter.take(free);
        if (slots === 0) {
          await this.#sleep(this.#limiter.msUntilToken());
          continue;
        }
        const probing = !sink.isOk;
        this.#hint = 0;
        this.#news = false;
        this.#slotFreed = false;
        this.#lastClaimAt = Date.now();
        const started = await this.#startClaim(slots, batchSize, probing);
        this.#limiter.refund(slots - started);
        if (started === 0) await this.#sleep(this.#o.pollIntervalMs);
      } catch (err) {
        log.error({ err }, "delivery loop error (database unavailable?); retrying");
        this.#o.metrics?.databaseErrors.inc({ where: "delivery" });
        await this.#sleep(this.#o.pollIntervalMs * 2);
      }
    }
  }

  /**
   * Claims events for up to `slots` batches in one transaction on a connection of its own and
   * leaves them delivering in the background. Returns how many batches it started.
   */
  async #startClaim(slots: number, batchSize: number, probing: boolean): Promise<number> {
    const limit = slots * batchSize;
    const conn = await this.#o.sql.reserve();
    let claimed: ClaimedEvent[];
    try {
      // BEGIN and the claim are pipelined: one round trip. With claims in flight, the claim starts
      // after the last event they took instead of stepping over the rows they hold locked.
      const cursor = this.#busy > 0 ? this.#cursor : null;
      [, claimed] = await Promise.all([
        conn.unsafe("BEGIN"),
        cursor
          ? conn.unsafe<ClaimedEvent[]>(
              query("claim_due_events_after"),
              [limit, cursor.at, cursor.id],
              PREPARED,
            )
          : conn.unsafe<ClaimedEvent[]>(query("claim_due_events"), [limit], PREPARED),
      ]);
      if (claimed.length < limit && cursor) {
        // Past the cursor the queue is short: look from the start once (rows freed behind it).
        const seen = new Set(claimed.map((e) => e.id));
        const more = await conn.unsafe<ClaimedEvent[]>(
          query("claim_due_events"),
          [limit - claimed.length],
          PREPARED,
        );
        claimed = claimed.concat(more.filter((e) => !seen.has(e.id)));
      }
      if (claimed.length === 0 && probing) {
        claimed = await conn.unsafe<ClaimedEvent[]>(query("claim_soonest_events"), [batchSize], PREPARED);
      }
    } catch (err) {
      await endClaim(conn, "ROLLBACK");
      throw err;
    }
    this.#drained = claimed.length < limit;
    if (claimed.length === 0) {
      await endClaim(conn, "COMMIT");
      return 0;
    }
    // Attempts are stored at the settle; in memory each event carries this attempt's number.
    for (const e of claimed) e.attempts += 1;
    const tail = claimed[claimed.length - 1] as ClaimedEvent;
    if (!this.#cursor || after({ at: tail.cursor_at, id: tail.id }, this.#cursor)) {
      this.#cursor = { at: tail.cursor_at, id: tail.id };
    }
    const batches = Math.ceil(claimed.length / batchSize);
    this.#busy += batches;
    const started = performance.now();
    const p = this.#runClaim(conn, claimed, batchSize, batches)
      .catch((err: unknown) => {
        const claimMs = Math.round(performance.now() - started);
        // PostgreSQL ends a claim's session once it sits idle past the lease (idle in transaction).
        const closed = (err as { code?: unknown } | null)?.code === "CONNECTION_CLOSED";
        this.#o.log.error(
          { err, claimMs, events: claimed.length },
          closed
            ? "delivery failed: the claim lost its database connection; its events are due again (nothing was settled). If the claim took longer than LAGO_LEASE_SECONDS (slow Lago lookups), raise it"
            : "delivery failed; its events are due again (nothing was settled)",
        );
        this.#o.metrics?.databaseErrors.inc({ where: "delivery" });
      })
      .finally(() => this.#claims.delete(p));
    this.#claims.add(p);
    return batches;
  }

  /** A batch slot is free again: the dispatcher may claim for it now. */
  #freeSlots(n: number): void {
    if (n <= 0) return;
    this.#busy -= n;
    this.#slotFreed = true;
    this.#nudge();
  }

  /**
   * Delivers a claim: checks it, sends its batches side by side, then writes every outcome in one
   * statement and commits. Any error before the commit rolls it all back: the events are due again
   * (Lago's dedupe covers those it already has). Slots free up batch by batch, as each is done.
   */
  async #runClaim(conn: Conn, claimed: ClaimedEvent[], batchSize: number, batches: number): Promise<void> {
    const out = new Outcomes();
    let busy = batches;
    try {
      const { sink, log } = this.#o;
      const epoch = sink.epoch;
      let prepared: { send: ClaimedEvent[]; parked: Settlement[] } | null = null;
      try {
        prepared = await this.#prepare(claimed, conn);
      } catch (err) {
        this.#prepareFailed(claimed, out, epoch, err);
      }
      if (prepared) {
        if (prepared.parked.length > 0) {
          const unbillable = prepared.parked.filter((p) => p.state === "unbillable");
          if (unbillable.length > 0)
            log.warn(
              { count: unbillable.length, reason: unbillable[0]?.error },
              "events parked as unbillable",
            );
          const held = prepared.parked.filter((p) => p.state === "pending");
          if (held.length > 0) log.info({ count: held.length, reason: held[0]?.error }, "events held");
          out.rows.push(...prepared.parked);
        }
        const groups: ClaimedEvent[][] = [];
        for (let i = 0; i < prepared.send.length; i += batchSize)
          groups.push(prepared.send.slice(i, i + batchSize));
        this.#freeSlots(busy - groups.length);
        busy = groups.length;
        await Promise.all(
          groups.map((g) =>
            this.#deliver(g, out, epoch).finally(() => {
              busy--;
              this.#freeSlots(1);
            }),
          ),
        );
      }
    } catch (err) {
      this.#freeSlots(busy);
      await endClaim(conn, "ROLLBACK");
      throw err;
    }
    this.#freeSlots(busy);
    // The outcomes and the COMMIT are pipelined (one round trip): should the write fail, PostgreSQL
    // answers the COMMIT of the failed transaction with a rollback, and the events are due again.
    try {
      await Promise.all([this.#write(conn, out), conn.unsafe("COMMIT")]);
    } finally {
      conn.release();
    }
    this.#count(out);
  }

  /** Writes a claim's outcomes and its attempts in one statement (inside the claim's transaction). */
  async #write(conn: Conn, out: Outcomes): Promise<void> {
    if (out.delivered.length === 0 && out.rows.length === 0 && out.attempts.length === 0) return;
    await conn.unsafe(
      query("settle_events"),
      [
        out.delivered.map((d) => d.id),
        out.delivered.map((d) => d.status),
        JSON.stringify(out.rows),
        JSON.stringify(out.attempts),
        this.#o.workerId,
      ] as never,
      PREPARED,
    );
  }

  /** Counts what a committed claim settled. */
  #count(out: Outcomes): void {
    const m = this.#o.metrics;
    if (!m) return;
    if (out.delivered.length > 0) m.delivered.inc({ duplicate: "false" }, out.delivered.length);
    for (const r of out.rows) {
      if (r.state === "delivered") m.delivered.inc({ duplicate: r.duplicate ? "true" : "false" });
      else if (r.state !== "pending") m.parked.inc({ state: r.state });
    }
  }

  /**
   * Subscriptions and metric codes are checked before an event's first send; Lago would take them
   * silently. Each call is placed in the subscription span that bills it (subscription-span.ts):
   * what would vanish is parked as unbillable, what cannot be decided yet (a pending subscription
   * Lago has not activated) is held, without using up attempts, until the age limit.
   */
  async #prepare(batch: ClaimedEvent[], conn: Conn): Promise<{ send: ClaimedEvent[]; parked: Settlement[] }> {
    const { resolver, sink, retry } = this.#o;
    for (const code of new Set(batch.map((e) => e.code))) {
      if (!(await resolver.metricExists(code))) {
        sink.metricMissing(code);
        throw new MetricMissing(code);
      }
    }
    const parked: Settlement[] = [];
    const send: ClaimedEvent[] = [];
    const frozen: { id: string; subscription: string }[] = [];
    const placers = new Map<string, ReturnType<SubscriptionResolver["placer"]>>();
    const now = Date.now();
    for (const e of batch) {
      const firstSend = e.attempts === 1 || e.external_subscription_id === null;
      if (!firstSend) {
        send.push(e);
        continue;
      }
      const key: MappingKey =
        e.external_subscription_id === null
          ? { kind: "customer", id: e.customer_id }
          : { kind: "subscription", id: e.external_subscription_id };
      const mapKey = `${key.kind}\u0000${key.id}`;
      let placer = placers.get(mapKey);
      if (!placer) {
        placer = resolver.placer(key);
        placers.set(mapKey, placer);
      }
      const p = await placer.place(e.event_timestamp);
      if (p.kind === "park") {
        parked.push({ id: e.id, state: "unbillable", error: p.reason, uncount: 1 });
        continue;
      }
      if (p.kind === "hold") {
        const gaveUp = giveUpReason(
          { ...retry, maxAttempts: Number.POSITIVE_INFINITY },
          0,
          new Date(e.created_at).getTime(),
          now,
        );
        parked.push(
          gaveUp
            ? { id: e.id, state: "failed", error: `${gaveUp}: ${p.reason}` }
            : { id: e.id, state: "pending", delay_s: HOLD_SECONDS, error: p.reason, uncount: 1 },
        );
        continue;
      }
      if (p.subscriptionId !== e.external_subscription_id) {
        frozen.push({ id: e.id, subscription: p.subscriptionId });
        e.external_subscription_id = p.subscriptionId;
      }
      send.push(e);
    }
    if (frozen.length > 0) {
      // The subscriptions must be stored before the send, so a resend after a crash goes to the same
      // subscription: commit them, then lock the batch again in a new transaction.
      await conn.unsafe(query("freeze_subscriptions"), [JSON.stringify(frozen)]);
      await conn.unsafe("COMMIT");
      const [, rows] = await Promise.all([
        conn.unsafe("BEGIN"),
        conn.unsafe<{ id: string }[]>(query("relock_events"), [batch.map((e) => e.id)] as never),
      ]);
      const held = new Set(rows.map((r) => r.id));
      return { send: send.filter((e) => held.has(e.id)), parked: parked.filter((p) => held.has(p.id)) };
    }
    return { send, parked };
  }

  /** Sends one batch (and, after a 422, the events Lago did not object to), recording outcomes. */
  async #deliver(batch: ClaimedEvent[], out: Outcomes, epoch: number): Promise<void> {
    let rest = batch;
    // A 422 rejects the whole batch: the events Lago did not object to are sent again at once; after
    // too_many_events, in smaller batches. Bounded, so a Lago answering nonsense cannot spin a slot.
    for (let round = 0; rest.length > 0 && round < 12; round++) {
      const size = this.#batchSize;
      const again: ClaimedEvent[] = [];
      for (let i = 0; i < rest.length; i += size) {
        again.push(...(await this.#sendOnce(rest.slice(i, i + size), out, epoch)));
      }
      rest = again;
    }
    if (rest.length > 0) {
      out.settle(
        rest.map((e) => ({ id: e.id, state: "pending", delay_s: 1, uncount: 0 })),
        null,
      );
    }
  }

  /**
   * Checking subscriptions or metrics failed, so nothing was sent. A missing metric or a refused key
   * holds everything without using up attempts; Lago being unreachable counts as an attempt (so a
   * long outage still ends in failed, reprocessable events after LAGO_MAX_ATTEMPTS or the age limit).
   */
  #prepareFailed(claimed: ClaimedEvent[], out: Outcomes, epoch: number, err: unknown): void {
    const { sink, retry } = this.#o;
    const error = err instanceof Error ? err.message : String(err);
    this.#lastFailure = { at: new Date(), error };
    const status = err instanceof LagoUnavailableError ? err.status : null;
    if (status === 429) {
      const ms = sink.rateLimited((err as LagoUnavailableError).wait, epoch);
      this.#o.metrics?.rateLimited.inc();
      out.settle(
        claimed.map((e) => ({ id: e.id, state: "pending", delay_s: ms / 1000, error, uncount: 1, status })),
        null,
      );
      return;
    }
    if (err instanceof MetricMissing || status === 401 || status === 403) {
      if (status === 401 || status === 403) sink.authFailed(`${status} from Lago`, epoch);
      const delay = err instanceof MetricMissing ? 60 : 30;
      out.settle(
        claimed.map((e) => ({ id: e.id, state: "pending", delay_s: delay, error, uncount: 1, status })),
        null,
      );
      return;
    }
    sink.failed(error, epoch);
    out.settle(retryOrFail(retry, claimed, error, status, Date.now()), null);
  }

  /** Sends one batch and settles it; returns the events to resend immediately (after a 422). */
  async #sendOnce(events: ClaimedEvent[], out: Outcomes, epoch: number): Promise<ClaimedEvent[]> {
    const { client, sink, log, metrics, retry } = this.#o;
    const body: LagoEventBody[] = events.map((e) => ({
      transaction_id: e.transaction_id,
      external_subscription_id: e.external_subscription_id as string,
      code: e.code,
      timestamp: e.event_timestamp,
      properties_json: e.properties,
      ...(e.precise_total_amount_cents === null
        ? {}
        : { precise_total_amount_cents: e.precise_total_amount_cents }),
    }));
    const started = performance.now();
    const outcome: BatchOutcome = await client.sendBatch(body);
    const ms = Math.round(performance.now() - started);
    metrics?.requestSeconds.observe({ status_class: statusClass(outcome.status) }, ms / 1000);
    const attempt: Attempt = {
      at: Date.now() / 1000,
      success: outcome.kind === "ok",
      status: outcome.status,
      count: events.length,
      ms,
      error:
        outcome.kind === "ok"
          ? null
          : "error" in outcome
            ? outcome.error
            : JSON.stringify(outcome).slice(0, 1000),
    };
    const now = Date.now();
    switch (outcome.kind) {
      case "ok": {
        this.#lastSuccess = new Date();
        if (sink.succeeded(epoch)) this.#afterRecovery();
        out.delivered.push(...events.map((e) => ({ id: e.id, status: outcome.status })));
        out.attempts.push(attempt);
        metrics?.lagSeconds && this.#observeLag(events, now);
        return [];
      }
      case "rejected": {
        if (sink.succeeded(epoch)) this.#afterRecovery();
        if (batchTooLong(outcome.details)) return this.#tooManyEvents(events, out, attempt);
        const { duplicate, invalid } = readRejection(outcome.details, events.length);
        const settled: Settlement[] = [];
        const resend: ClaimedEvent[] = [];
        events.forEach((e, i) => {
          if (duplicate.has(i)) settled.push({ id: e.id, state: "delivered", duplicate: true, status: 422 });
          else if (invalid.has(i))
            settled.push({ id: e.id, state: "failed", error: invalid.get(i), status: 422 });
          else resend.push(e);
        });
        if (invalid.size > 0)
          log.warn(
            { count: invalid.size, example: settled.find((s) => s.state === "failed")?.error },
            "Lago rejected events; parked as failed",
          );
        if (settled.length === 0) {
          // Lago objected to something it did not index: park the batch rather than loop.
          const error = `Lago answered 422 without index-keyed errors: ${JSON.stringify(outcome.details).slice(0, 500)}`;
          out.settle(
            events.map((e) => ({ id: e.id, state: "failed", error, status: 422 })),
            attempt,
          );
          return [];
        }
        out.settle(settled, attempt);
        return resend;
      }
      case "rate_limited": {
        const pauseMs = sink.rateLimited(outcome.wait, epoch);
        metrics?.rateLimited.inc();
        // Lago says how many requests its window allows: stay under it from now on (a 10 % margin).
        if (outcome.limit !== null && this.#limiter.capAt(Math.max(1, Math.floor(outcome.limit * 0.9)))) {
          log.warn({ limit: outcome.limit }, "Lago rate limit reached; capping requests per second below it");
        }
        out.settle(
          events.map((e) => ({
            id: e.id,
            state: "pending",
            delay_s: pauseMs / 1000,
            uncount: 1,
            status: 429,
          })),
          attempt,
        );
        return [];
      }
      case "auth": {
        sink.authFailed(outcome.error, epoch);
        this.#lastFailure = { at: new Date(), error: outcome.error };
        log.error(
          { status: outcome.status },
          "Lago refused the API key: nothing is sent until LAGO_API_KEY works; events stay pending",
        );
        out.settle(
          events.map((e) => ({
            id: e.id,
            state: "pending",
            delay_s: 30,
            uncount: 1,
            status: outcome.status,
            error: outcome.error,
          })),
          attempt,
        );
        return [];
      }
      case "retryable":
      case "invalid": {
        if (outcome.kind === "retryable") sink.failed(outcome.error, epoch);
        this.#lastFailure = { at: new Date(), error: outcome.error };
        const refused = outcome.kind === "invalid" ? "Lago refused the request" : null;
        out.settle(retryOrFail(retry, events, outcome.error, outcome.status, now, refused), attempt);
        return [];
      }
    }
  }

  /**
   * Lago refused the batch's length (`too_many_events`: self-hosted Lago's LAGO_EVENTS_BATCH_MAX_LENGTH
   * is below ours). Nothing was stored: halve the batch size for good and send the same events again.
   */
  #tooManyEvents(events: ClaimedEvent[], out: Outcomes, attempt: Attempt): ClaimedEvent[] {
    const { log, metrics } = this.#o;
    if (events.length <= 1) {
      // Lago takes not even one event per batch: a Lago misconfiguration no resend can fix.
      const error =
        "Lago answered too_many_events to a batch of one event: check LAGO_EVENTS_BATCH_MAX_LENGTH on the Lago side";
      this.#lastFailure = { at: new Date(), error };
      out.settle(retryOrFail(this.#o.retry, events, error, 422, Date.now()), attempt);
      return [];
    }
    out.settle([], attempt);
    const next = Math.max(1, Math.floor(events.length / 2));
    if (next < this.#batchSize) {
      this.#batchSize = next;
      this.#batchSizeReason =
        `Lago answered too_many_events to a batch of ${events.length}: its LAGO_EVENTS_BATCH_MAX_LENGTH ` +
        `is below LAGO_BATCH_SIZE=${this.#o.batchSize}; sending ${next} per request`;
      metrics?.batchSize.set(next);
      log.warn(
        { configured: this.#o.batchSize, effective: next },
        "Lago refused the batch length (too_many_events): batch size halved; set LAGO_BATCH_SIZE to Lago's limit",
      );
    }
    return events;
  }

  #observeLag(events: ClaimedEvent[], now: number): void {
    const h = this.#o.metrics?.lagSeconds;
    if (!h) return;
    for (const e of events) h.observe(Math.max(0, now / 1000 - e.event_timestamp));
  }

  /** Lago is back: events waiting out long backoffs go now instead of minutes later. */
  #afterRecovery(): void {
    this.#o.log.info("Lago answers again; sending the backlog");
    this.#o.sql
      .unsafe(query("retry_now"))
      .then(() => this.wake())
      .catch((err: unknown) => this.#o.log.warn({ err }, "could not advance retries after recovery"));
  }
}

/**
 * Each event back to pending after its backoff, or failed once its attempts or age ran out, or
 * failed at once with `refused` (Lago will never take the request as it is).
 */
function retryOrFail(
  retry: RetryPolicy,
  events: ClaimedEvent[],
  error: string,
  status: number | null,
  now: number,
  refused: string | null = null,
): Settlement[] {
  return events.map((e) => {
    const gaveUp = refused ?? giveUpReason(retry, e.attempts, new Date(e.created_at).getTime(), now);
    if (gaveUp) return { id: e.id, state: "failed", error: `${gaveUp}: ${error}`, status };
    return { id: e.id, state: "pending", delay_s: backoffMs(retry, e.attempts) / 1000, error, status };
  });
}

/**
 * Ends a claim's transaction and gives its connection back. A connection whose COMMIT or ROLLBACK
 * fails is broken: postgres.js drops it, and PostgreSQL releases the locks with the session.
 */
async function endClaim(conn: Conn, how: "COMMIT" | "ROLLBACK"): Promise<void> {
  try {
    await conn.unsafe(how);
  } catch {
    // a broken connection: nothing to end, the session's locks went with it
  } finally {
    conn.release();
  }
}

/**
 * True when a comes after b in claim order (next_attempt_at, id). Both timestamps are printed by the
 * same pool's sessions (one format and time zone), where text order is time order.
 */
function after(a: { at: string; id: string }, b: { at: string; id: string }): boolean {
  return a.at === b.at ? BigInt(a.id) > BigInt(b.id) : a.at > b.at;
}

/** How long an event waits for a pending subscription Lago has not activated yet. */
const HOLD_SECONDS = 60;

/** A 422 about the batch's length rather than its events: `{"events": ["too_many_events"]}`. */
function batchTooLong(details: Record<string, unknown>): boolean {
  const v = details.events;
  return Array.isArray(v) && v.includes("too_many_events");
}

class MetricMissing extends Error {
  constructor(code: string) {
    super(`billable metric "${code}" does not exist in Lago: run \`webhook-service lago setup\``);
  }
}
