import type { Redis } from "ioredis";
import type { Logger } from "pino";
import type { Sql } from "../db/pool.ts";
import { query } from "../db/queries.ts";
import { staticSubscriptionId } from "../lago/mapping.ts";
import { LagoUnavailableError } from "../lago/subscriptions.ts";
import type { EntitlementMetrics } from "../metrics.ts";
import type { Settings } from "../settings.ts";
import { type Decision, decide } from "./decide.ts";
import type { LagoReader } from "./lago-reader.ts";
import { type PublishedEntry, Publisher } from "./publisher.ts";
import {
  applySubscriptions,
  applyUsage,
  applyWallets,
  type EntitlementRow,
  ensureCustomers,
  inputsOf,
  limitFromAlerts,
  lockCustomer,
  recordDecision,
  type Unaccounted,
  unaccounted,
  type WalletRow,
} from "./store.ts";

// Any fixed number, distinct from the migration and reconciler locks: one engine leader at a time.
const ENGINE_LOCK = 7_305_111_003;
/** How often the leader looks at the ledger for new usage (the ~2 s goal is mostly the callback's batching). */
const TICK_MS = 200;
/** Ledger scans overlap by this much: a transaction that committed after a later one is still seen. */
const SCAN_OVERLAP_MS = 5000;
const HEARTBEAT_MS = 1000;
/** A proxy that sees no heartbeat for this long applies the fail mode. */
export const STALE_AFTER_SECONDS = 10;
/** Decisions unchanged but with a new available amount are written back at most this often. */
const PERSIST_EVERY_MS = 10_000;
/** Without usage for this long (and not blocked, no wallet or limit), a customer is refreshed 10× less often. */
const DORMANT_AFTER_MS = 3_600_000;
const FULL_REPUBLISH_MS = 300_000;

export interface EngineDeps {
  sql: Sql;
  redis: Redis | null;
  reader: LagoReader | null;
  settings: Settings;
  log: Logger;
  metrics: EntitlementMetrics;
}

export type DirtySource = "ledger" | "refresh" | "webhook" | "manual" | "engine";

/** One customer's evaluation: its inputs and the decision they give. */
export interface Evaluation {
  row: EntitlementRow;
  wallets: WalletRow[];
  ledger: Unaccounted | null;
  decision: Decision;
}

/**
 * Decides who is blocked and tells the proxies. One leader (a PostgreSQL advisory lock held on a
 * dedicated connection) does everything but webhook intake: it reads the ledger a few times a
 * second for customers with new usage and recomputes them (the path that blocks a customer within
 * seconds, with no webhook), refreshes customers from Lago's API when due (rate limited), recomputes
 * whatever a webhook, a refresh or an override changed (NOTIFY entitlements), and publishes changed
 * decisions to Redis. Any replica may receive webhooks; they write inputs and notify the leader.
 */
export class EntitlementEngine {
  readonly #d: EngineDeps;
  readonly publisher: Publisher | null;
  #leader = false;
  #conn: Awaited<ReturnType<Sql["reserve"]>> | null = null;
  #stopped = true;
  #timers: NodeJS.Timeout[] = [];
  /** The leader's loops, stopped when leadership is lost. */
  #leadTimers: NodeJS.Timeout[] = [];
  #unlisten: (() => Promise<void>) | null = null;
  readonly #dirty = new Map<string, DirtySource>();
  readonly #published = new Map<string, string>();
  readonly #lastUsage = new Map<string, number>();
  #scanFrom = new Date();
  #ticking: Promise<void> | null = null;
  #refreshing = 0;
  #lastFullPublish = 0;
  /** Redis missed a publication (or leadership just began): republish everything at the next tick. */
  #needFull = false;
  readonly #known = new Set<string>();
  readonly #warnedAt = new Map<string, number>();
  #wakeTimer: NodeJS.Timeout | null = null;
  /** For tests and the benchmark: resolves after each completed tick. */
  ticks = 0;

  constructor(deps: EngineDeps) {
    this.#d = deps;
    const s = deps.settings;
    this.publisher = deps.redis
      ? new Publisher(
          deps.redis,
          {
            mode: s.entitlements.mode,
            fail_mode: s.entitlements.failMode,
            attribution: s.ingest.attribution,
            markup_percent: s.entitlements.priceMarkupPercent,
            bill_cache_hits: s.ingest.billCacheHits,
            stale_after_seconds: STALE_AFTER_SECONDS,
          },
          s.entitlements.redisPrefix,
        )
      : null;
  }

  get isLeader(): boolean {
    return this.#leader;
  }

  get mode(): Settings["entitlements"]["mode"] {
    return this.#d.settings.entitlements.mode;
  }

  /** Starts competing for leadership; the leader's loops run until stop(). */
  async start(): Promise<void> {
    if (!this.#stopped) return;
    this.#stopped = false;
    const sub = await this.#d.sql.listen("entitlements", (customer) => {
      if (this.#leader && customer) this.markDirty(customer, "webhook");
    });
    this.#unlisten = sub.unlisten;
    await this.#tryLead();
    this.#every(2000, () => this.#tryLead());
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    for (const t of this.#leadTimers) clearInterval(t);
    this.#leadTimers = [];
    if (this.#wakeTimer) clearTimeout(this.#wakeTimer);
    await this.#unlisten?.().catch(() => undefined);
    await this.#ticking?.catch(() => undefined);
    for (let i = 0; i < 100 && this.#refreshing > 0; i++) await new Promise((r) => setTimeout(r, 50));
    await this.#resign();
  }

  /** A customer's inputs changed: recompute it at the next tick (or now). */
  markDirty(customerId: string, source: DirtySource): void {
    if (!this.#dirty.has(customerId) || source !== "ledger") this.#dirty.set(customerId, source);
    if (this.#leader && !this.#wakeTimer) {
      this.#wakeTimer = setTimeout(() => {
        this.#wakeTimer = null;
        void this.#tick();
      }, 5);
    }
  }

  #every(ms: number, fn: () => Promise<void> | void, into: NodeJS.Timeout[] = this.#timers): void {
    const name = fn.toString().slice(0, 60);
    const t = setInterval(() => {
      if (this.#stopped) return;
      Promise.resolve(fn()).catch((err: unknown) => {
        // Once a minute per step: a Redis or database outage would otherwise log every tick.
        const last = this.#warnedAt.get(name) ?? 0;
        if (Date.now() - last < 60_000) return;
        this.#warnedAt.set(name, Date.now());
        this.#d.log.warn(
          { err: (err as Error).message },
          "entitlement engine step failed (retrying; logged once a minute)",
        );
      });
    }, ms);
    t.unref();
    into.push(t);
  }

  async #tryLead(): Promise<void> {
    if (this.#stopped) return;
    if (this.#leader) {
      // Still holding it? A dropped connection released the lock server-side.
      try {
        const conn = this.#conn;
        if (conn) await conn`SELECT 1`;
        return;
      } catch {
        this.#d.log.warn("entitlement engine lost its leader connection; standing down");
        await this.#resign();
      }
    }
    let conn: Awaited<ReturnType<Sql["reserve"]>>;
    try {
      conn = await this.#d.sql.reserve();
    } catch {
      return;
    }
    try {
      const [r] = await conn<{ ok: boolean }[]>`SELECT pg_try_advisory_lock(${ENGINE_LOCK}) AS ok`;
      if (!r?.ok) {
        conn.release();
        return;
      }
    } catch {
      conn.release();
      return;
    }
    this.#conn = conn;
    this.#leader = true;
    this.#d.log.info({ mode: this.mode }, "entitlement engine leading");
    await this.#lead();
  }

  async #resign(): Promise<void> {
    if (!this.#conn) return;
    const conn = this.#conn;
    this.#conn = null;
    this.#leader = false;
    for (const t of this.#leadTimers) clearInterval(t);
    this.#leadTimers = [];
    await conn`SELECT pg_advisory_unlock(${ENGINE_LOCK})`.catch(() => undefined);
    conn.release();
  }

  /** Leadership gained: rebuild the published state from PostgreSQL, then run the loops. */
  async #lead(): Promise<void> {
    await this.publisher?.heartbeat().catch(() => undefined);
    const lead = this.#leadTimers;
    this.#every(
      HEARTBEAT_MS,
      async () => {
        if (!this.#leader) return;
        await this.publisher?.heartbeat();
      },
      lead,
    );
    if (this.mode === "off") {
      // Tell the proxies enforcement is off (they serve everyone without waiting for a timeout).
      this.#needFull = true;
      this.#every(
        HEARTBEAT_MS,
        async () => {
          if (!this.#leader || !this.#needFull) return;
          await this.publisher?.publish(new Map(), { full: true });
          this.#needFull = false;
        },
        lead,
      );
      return;
    }
    this.#scanFrom = new Date(Date.now() - SCAN_OVERLAP_MS);
    this.#published.clear();
    try {
      await this.#recomputeAll();
    } catch (err) {
      this.#needFull = true; // Redis not answering yet: the first tick that can will do it
      this.#d.log.warn({ err: (err as Error).message }, "entitlements: first publication failed; retrying");
    }
    this.#every(TICK_MS, () => this.#tick(), lead);
    this.#every(500, () => this.#refreshDue(), lead);
  }

  async #recomputeAll(): Promise<void> {
    this.#needFull = true;
    const changes = new Map<string, PublishedEntry | null>();
    let after = "";
    for (;;) {
      const ids = await this.#d.sql<{ customer_id: string }[]>`
        SELECT customer_id FROM entitlements WHERE customer_id > ${after} ORDER BY customer_id LIMIT 500`;
      if (ids.length === 0) break;
      after = ids[ids.length - 1]?.customer_id ?? after;
      const evals = await this.evaluate(ids.map((r) => r.customer_id));
      for (const e of evals.values()) {
        this.#known.add(e.row.customer_id);
        await this.#persist(e, "engine");
        const entry = entryOf(e);
        if (entry) changes.set(e.row.customer_id, entry);
      }
    }
    await this.publisher?.publish(changes, { full: true });
    this.#published.clear();
    for (const [c, e] of changes) this.#published.set(c, JSON.stringify(e));
    this.#lastFullPublish = Date.now();
    this.#needFull = false;
  }

  /** Inputs and decisions for customers (read-only: nothing is written or published). */
  async evaluate(customerIds: string[]): Promise<Map<string, Evaluation>> {
    const out = new Map<string, Evaluation>();
    if (customerIds.length === 0) return out;
    const rows = await this.#d.sql<EntitlementRow[]>`
      SELECT * FROM entitlements WHERE customer_id = ANY(${customerIds}::text[])`;
    const wallets = await this.#d.sql<WalletRow[]>`
      SELECT * FROM entitlement_wallets WHERE customer_id = ANY(${customerIds}::text[])`;
    const byCustomer = new Map<string, WalletRow[]>();
    for (const w of wallets) byCustomer.set(w.customer_id, [...(byCustomer.get(w.customer_id) ?? []), w]);
    const needLedger = rows.filter((r) => r.wallet_counted_until !== null || r.usage_counted_until !== null);
    const ledger = await unaccounted(
      this.#d.sql,
      needLedger,
      this.#d.settings.entitlements.priceMarkupPercent,
    );
    for (const row of rows) {
      const l = ledger.get(row.customer_id) ?? null;
      const w = byCustomer.get(row.customer_id) ?? [];
      const decision = decide(
        inputsOf(
          row,
          w,
          { walletCents: l?.walletCents ?? "0", usageCents: l?.usageCents ?? "0" },
          this.#d.settings.entitlements.minBalanceCents,
        ),
      );
      out.set(row.customer_id, { row, wallets: w, ledger: l, decision });
    }
    return out;
  }

  /** Writes a decision back when it changed (or, unchanged, its amounts every 10 s). */
  async #persist(e: Evaluation, source: DirtySource): Promise<void> {
    const { row, decision } = e;
    const changed =
      row.state !== decision.state ||
      row.reason !== decision.reason ||
      row.message !== decision.message ||
      row.computed_state !== decision.computed.state ||
      row.computed_reason !== decision.computed.reason;
    const amountsStale =
      row.available_cents !== decision.availableCents &&
      (row.decided_at === null || Date.now() - row.decided_at.getTime() > PERSIST_EVERY_MS);
    if (!changed && !amountsStale) return;
    const transition = await recordDecision(this.#d.sql, row.customer_id, decision, {
      source,
      unaccountedCents: e.ledger?.walletCents ?? null,
      detail: {
        available_cents: decision.availableCents,
        unaccounted_cents: e.ledger?.walletCents ?? null,
        wallet_counted_until: row.wallet_counted_until,
        limit_cents: row.limit_cents,
        usage_cents: row.usage_cents,
        subscription_status: row.subscription_status,
        mode: this.mode,
      },
    });
    if (transition) {
      this.#d.metrics.decisions.inc({ state: decision.state, reason: decision.reason ?? "none", source });
      this.#d.log.info(
        {
          customer: row.customer_id,
          state: decision.state,
          reason: decision.reason,
          previous: row.state,
          source,
          available_cents: decision.availableCents,
          mode: this.mode,
        },
        this.mode === "observe" && decision.state === "blocked"
          ? "entitlement: would block (ENFORCEMENT=observe)"
          : `entitlement: ${decision.state}`,
      );
    }
  }

  /** One leader step: new usage from the ledger, recompute what changed, publish. */
  #tick(): Promise<void> {
    if (this.#ticking || !this.#leader) return this.#ticking ?? Promise.resolve();
    this.#ticking = this.#step().finally(() => {
      this.#ticking = null;
      this.ticks++;
    });
    return this.#ticking;
  }

  async #step(): Promise<void> {
    if (this.#needFull) {
      await this.#recomputeAll();
      return;
    }
    const scanStart = new Date();
    const recent = await this.#d.sql.unsafe<{ customer_id: string; last_usage_at: Date }[]>(
      query("entitlement_recent_customers"),
      [new Date(this.#scanFrom.getTime() - SCAN_OVERLAP_MS).toISOString()],
      { prepare: true },
    );
    this.#scanFrom = scanStart;
    const fresh: string[] = [];
    for (const r of recent) {
      // Every customer with rows in the (overlapping) window is recomputed, not only those whose
      // newest row moved: a transaction that started earlier may commit after a later one.
      if (!this.#dirty.has(r.customer_id)) this.#dirty.set(r.customer_id, "ledger");
      const t = r.last_usage_at.getTime();
      if (t > (this.#lastUsage.get(r.customer_id) ?? 0)) {
        this.#lastUsage.set(r.customer_id, t);
        fresh.push(r.customer_id);
      }
    }
    const unknown = fresh.filter((c) => !this.#known.has(c));
    if (unknown.length > 0) {
      const created = await ensureCustomers(this.#d.sql, unknown);
      for (const c of unknown) this.#known.add(c);
      if (created.length > 0)
        this.#d.log.debug({ customers: created }, "entitlements: new customers tracked");
    }
    if (fresh.length > 0) {
      // A customer dormant since its last refresh is refreshed now that it calls again.
      await this.#d.sql`
        UPDATE entitlements SET next_refresh_at = now()
        WHERE customer_id = ANY(${fresh}::text[]) AND next_refresh_at > now()
          AND (refreshed_at IS NULL
               OR refreshed_at < now() - make_interval(secs => ${this.#d.settings.entitlements.refreshIntervalSeconds}::float8))`;
    }
    if (this.#dirty.size === 0) {
      if (Date.now() - this.#lastFullPublish > FULL_REPUBLISH_MS) await this.#recomputeAll();
      return;
    }
    const batch = new Map(this.#dirty);
    this.#dirty.clear();
    const evals = await this.evaluate([...batch.keys()]);
    const changes = new Map<string, PublishedEntry | null>();
    for (const [customer, source] of batch) {
      const e = evals.get(customer);
      if (!e) continue;
      this.#known.add(customer);
      await this.#persist(e, source);
      const entry = entryOf(e);
      const text = entry === null ? null : JSON.stringify(entry);
      if ((this.#published.get(customer) ?? null) !== text) changes.set(customer, entry);
    }
    if (changes.size > 0 && this.publisher) {
      try {
        await this.publisher.publish(changes);
      } catch (err) {
        this.#needFull = true; // Redis missed these: write everything again once it answers
        throw err;
      }
      for (const [c, e] of changes) {
        if (e === null) this.#published.delete(c);
        else this.#published.set(c, JSON.stringify(e));
      }
    }
  }

  /** Refreshes due customers from Lago (the limiter paces the requests). */
  async #refreshDue(): Promise<void> {
    const reader = this.#d.reader;
    if (!this.#leader || !reader) return;
    const room = 8 - this.#refreshing;
    if (room <= 0) return;
    const claimed = await this.#d.sql.unsafe<{ customer_id: string }[]>(
      query("entitlement_claim_refresh"),
      [room, 120],
      { prepare: true },
    );
    for (const { customer_id } of claimed) {
      this.#refreshing++;
      void this.refresh(customer_id).finally(() => {
        this.#refreshing--;
      });
    }
  }

  /** Reads a customer's wallets, subscriptions, limit and usage from Lago and stores them. */
  async refresh(customerId: string): Promise<void> {
    const reader = this.#d.reader;
    if (!reader) return;
    const s = this.#d.settings;
    const interval = s.entitlements.refreshIntervalSeconds;
    try {
      const wallets = await reader.wallets(customerId);
      const subs = await reader.subscriptions(customerId);
      const expected = staticSubscriptionId(s.lago, customerId);
      let limitCents: string | null = null;
      let usage = null;
      for (const sub of subs) {
        if (sub.status !== "active" || (expected !== null && sub.externalId !== expected)) continue;
        const limit = limitFromAlerts(await reader.alerts(sub.externalId), s.entitlements.limitThresholdCode);
        if (limit !== null) {
          limitCents = limit;
          usage = await reader.currentUsage(customerId, sub.externalId);
          break;
        }
      }
      const now = new Date();
      const lastUsage = this.#lastUsage.get(customerId) ?? 0;
      await this.#d.sql.begin(async (tx) => {
        const markup = s.entitlements.priceMarkupPercent;
        const row = await lockCustomer(tx, customerId);
        // Subscriptions first: the billing period they give is where counted usage starts.
        await applySubscriptions(tx, row, subs, {
          source: "api",
          complete: true,
          expectedExternalId: expected,
          now,
        });
        const fresh = await lockCustomer(tx, customerId);
        await applyWallets(tx, fresh, wallets, "api", now, markup);
        await applyUsage(tx, fresh, limitCents, usage, now, markup);
        const active =
          row.state === "blocked" ||
          wallets.some((w) => w.status === "active") ||
          limitCents !== null ||
          Date.now() - lastUsage < DORMANT_AFTER_MS;
        await tx`
          UPDATE entitlements SET refreshed_at = ${now}, refresh_error = NULL,
            next_refresh_at = ${new Date(now.getTime() + interval * 1000 * (active ? 1 : 10))}
          WHERE customer_id = ${customerId}`;
      });
      this.#d.metrics.refreshes.inc({ outcome: "ok" });
      this.markDirty(customerId, "refresh");
    } catch (err) {
      const rateLimited = err instanceof LagoUnavailableError && err.status === 429;
      this.#d.metrics.refreshes.inc({ outcome: rateLimited ? "rate_limited" : "error" });
      const message = (err as Error).message;
      this.#d.log.warn({ customer: customerId, err: message }, "entitlement refresh from Lago failed");
      await this.#d.sql`
        UPDATE entitlements SET refresh_error = ${message},
          next_refresh_at = now() + make_interval(secs => ${Math.min(interval, 10)}::float8)
        WHERE customer_id = ${customerId}`.catch(() => undefined);
    }
  }

  /** Waits until the leader has finished a tick that started after now (tests, benchmarks). */
  async settle(): Promise<void> {
    const target = this.ticks + 2;
    for (let i = 0; i < 200 && this.ticks < target; i++) await new Promise((r) => setTimeout(r, 25));
  }
}

/** What the proxies get for one evaluation; null: nothing to say (allowed, no credit to watch). */
export function entryOf(e: Evaluation): PublishedEntry | null {
  const d = e.decision;
  if (d.state === "blocked") return { s: "blocked", r: d.reason, m: d.message };
  if (d.headroom) {
    return {
      s: "allowed",
      r: d.headroom.reason,
      m: d.headroom.message,
      h: d.headroom.cents,
      t: e.ledger?.seenThrough ?? null,
    };
  }
  return null;
}
