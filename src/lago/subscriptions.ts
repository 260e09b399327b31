import type { Redis } from "ioredis";
import { type LagoClient, type LagoResponse, type RateLimitWait, rateLimitWait } from "./client.ts";
import {
  type Placement,
  placeEvent,
  type SubscriptionSpan,
  type SubscriptionView,
  spanFromLago,
} from "./subscription-span.ts";

/** Lago answered in a way that says nothing about the subscription (5xx, timeout, 401, 429...). */
export class LagoUnavailableError extends Error {
  override name = "LagoUnavailableError";
  readonly status: number | null;
  /** On a 429: how long Lago (or the proxy in front) asked us to wait, when it said. */
  readonly wait: RateLimitWait | null;
  constructor(message: string, status: number | null, wait: RateLimitWait | null = null) {
    super(message);
    this.status = status;
    this.wait = wait;
  }
}

export type MappingKey = SubscriptionView["key"];

/** A view held in memory, and whether it came from a cache (decisions to park are never made on one). */
interface Held {
  view: SubscriptionView;
  cached: boolean;
}

/** Pending subscriptions change state on Lago's clock: their views are kept briefly. */
const PENDING_TTL_MS = 30_000;

/**
 * Answers "which Lago subscription bills this call?" before an event's first send, because Lago
 * accepts events for unknown, pending or terminated subscriptions, or outside their span, with 200
 * and never bills them.
 *
 * Lago's `GET /api/v1/subscriptions/:external_id` finds only active subscriptions unless asked for
 * another `status` (app/controllers/api/v1/subscriptions_controller.rb#show), so the active one is
 * asked first and pending/terminated ones only when a call falls outside it. Views with an active
 * subscription are cached for LAGO_SUBSCRIPTION_CACHE_TTL_SECONDS (in Redis when configured, so
 * replicas share them), pending-only views for 30 s, others not at all; and a decision to park is
 * always made on a fresh answer, so a subscription created or fixed a moment ago is seen at once.
 */
export class SubscriptionResolver {
  readonly #client: LagoClient;
  readonly #ttlMs: number;
  readonly #redis: Redis | undefined;
  /** Parsed values, so the hot path does not parse a view per batch; Redis holds them as JSON. */
  readonly #local = new Map<string, { value: unknown; expires: number }>();

  constructor(client: LagoClient, opts: { ttlSeconds: number; redis?: Redis }) {
    this.#client = client;
    this.#ttlMs = opts.ttlSeconds * 1000;
    this.#redis = opts.redis;
  }

  /**
   * A placer for one mapping key: it fetches what it needs once and places any number of calls,
   * asking Lago for more (pending, terminated, fresh) only when a call needs it.
   */
  placer(key: MappingKey): {
    place(timestampSeconds: number): Promise<Exclude<Placement, { kind: "incomplete" }>>;
  } {
    let held: Held | null = null;
    let refreshed = false;
    return {
      place: async (ts) => {
        held ??= await this.#view(key, { complete: false, fresh: false });
        let p = placeEvent(held.view, ts);
        if (
          p.kind === "incomplete" ||
          ((p.kind === "park" || p.kind === "hold") && held.cached && !refreshed)
        ) {
          held = await this.#view(key, { complete: true, fresh: true });
          refreshed = true;
          p = placeEvent(held.view, ts);
        }
        if (p.kind === "incomplete") throw new Error("a complete subscription view cannot be incomplete");
        return p;
      },
    };
  }

  /** Everything Lago has for the key (active, pending, terminated), uncached: for validate and setup. */
  async describe(key: MappingKey): Promise<SubscriptionView> {
    return (await this.#view(key, { complete: true, fresh: true })).view;
  }

  /** Checks that a billable metric code exists. */
  async metricExists(code: string): Promise<boolean> {
    const key = `metric:${code}`;
    if ((await this.#cached(key)) !== undefined) return true;
    const res = await this.#get(`/api/v1/billable_metrics/${encodeURIComponent(code)}`);
    if (res.status === 404) return false;
    await this.#remember(key, true, this.#ttlMs);
    return true;
  }

  async #view(key: MappingKey, opts: { complete: boolean; fresh: boolean }): Promise<Held> {
    const cacheKey = `view:${key.kind}:${key.id}`;
    if (!opts.fresh) {
      const view = (await this.#cached(cacheKey)) as SubscriptionView | undefined;
      if (view && (view.complete || !opts.complete)) return { view, cached: true };
    }
    const view =
      key.kind === "customer" ? await this.#customerView(key.id) : await this.#subscriptionView(key.id, opts);
    const ttl =
      view.active.length > 0
        ? this.#ttlMs
        : view.pending.length > 0
          ? Math.min(this.#ttlMs, PENDING_TTL_MS)
          : 0;
    if (ttl > 0) await this.#remember(cacheKey, view, ttl);
    else this.#local.delete(cacheKey);
    return { view, cached: false };
  }

  /** Same/template mapping: the subscription by external id, active first. */
  async #subscriptionView(id: string, opts: { complete: boolean }): Promise<SubscriptionView> {
    const path = `/api/v1/subscriptions/${encodeURIComponent(id)}`;
    const one = async (status: string | null): Promise<SubscriptionSpan[]> => {
      const res = await this.#get(status === null ? path : `${path}?status=${status}`);
      if (res.status === 404) return [];
      const span = spanFromLago((res.body as { subscription?: unknown } | null)?.subscription);
      return span ? [span] : [];
    };
    const active = await one(null);
    if (active.length > 0 && !opts.complete) {
      return { key: { kind: "subscription", id }, active, pending: [], terminated: [], complete: false };
    }
    const [pending, terminated] = await Promise.all([one("pending"), one("terminated")]);
    return { key: { kind: "subscription", id }, active, pending, terminated, complete: true };
  }

  /** Lookup mapping: every subscription of the customer that can bill, in one list call. */
  async #customerView(customerId: string): Promise<SubscriptionView> {
    const res = await this.#get(
      `/api/v1/subscriptions?external_customer_id=${encodeURIComponent(customerId)}` +
        "&status[]=active&status[]=pending&status[]=terminated&per_page=100",
    );
    const list =
      res.status === 404 ? [] : ((res.body as { subscriptions?: unknown[] } | null)?.subscriptions ?? []);
    const spans = list.map(spanFromLago).filter((s): s is SubscriptionSpan => s !== null);
    return {
      key: { kind: "customer", id: customerId },
      active: spans.filter((s) => s.status === "active"),
      pending: spans.filter((s) => s.status === "pending"),
      terminated: spans
        .filter((s) => s.status === "terminated")
        .sort((a, b) => (b.terminatedAt ?? 0) - (a.terminatedAt ?? 0)),
      complete: true,
    };
  }

  /** A value from memory, else from Redis (shared by replicas; kept locally for at most 30 s). */
  async #cached(key: string): Promise<unknown> {
    const hit = this.#local.get(key);
    if (hit && hit.expires > Date.now()) return hit.value;
    if (!this.#redis || this.#ttlMs <= 0) return undefined;
    const text = await this.#redis.get(`lago-billing:v2:${key}`).catch(() => null);
    if (text === null) return undefined;
    try {
      const value: unknown = JSON.parse(text);
      this.#local.set(key, { value, expires: Date.now() + Math.min(this.#ttlMs, 30_000) });
      return value;
    } catch {
      return undefined; // an unreadable entry is fetched again
    }
  }

  async #remember(key: string, value: unknown, ttlMs: number): Promise<void> {
    if (ttlMs <= 0) return;
    this.#local.set(key, { value, expires: Date.now() + ttlMs });
    await this.#redis
      ?.set(`lago-billing:v2:${key}`, JSON.stringify(value), "PX", ttlMs)
      .catch(() => undefined);
  }

  async #get(path: string): Promise<LagoResponse> {
    let res: LagoResponse;
    try {
      res = await this.#client.request("GET", path);
    } catch (err) {
      throw new LagoUnavailableError(`Lago unreachable: ${(err as Error).message}`, null);
    }
    if (res.status === 200 || res.status === 404) return res;
    throw new LagoUnavailableError(
      `GET ${path.split("?")[0]} answered ${res.status}`,
      res.status,
      res.status === 429 ? rateLimitWait(res.headers, Date.now()) : null,
    );
  }
}
