import type { Redis } from "ioredis";
import type { LagoClient } from "./client.ts";

/** Lago answered in a way that says nothing about the subscription (5xx, timeout, 401...). */
export class LagoUnavailableError extends Error {
  override name = "LagoUnavailableError";
  readonly status: number | null;
  constructor(message: string, status: number | null) {
    super(message);
    this.status = status;
  }
}

export type Resolution = { ok: true; subscriptionId: string } | { ok: false; reason: string };

/**
 * Answers "which Lago subscription does this event go to, and does it exist?" before an event's first
 * send, because Lago itself accepts events for unknown subscriptions with 200 and never bills them.
 * Positive answers are cached (in Redis when configured, so replicas share them); negative answers
 * are not, so a subscription created later is found at once.
 */
export class SubscriptionResolver {
  readonly #client: LagoClient;
  readonly #ttlMs: number;
  readonly #redis: Redis | undefined;
  readonly #local = new Map<string, { value: string; expires: number }>();

  constructor(client: LagoClient, opts: { ttlSeconds: number; redis?: Redis }) {
    this.#client = client;
    this.#ttlMs = opts.ttlSeconds * 1000;
    this.#redis = opts.redis;
  }

  async #cached(key: string): Promise<string | undefined> {
    const hit = this.#local.get(key);
    if (hit && hit.expires > Date.now()) return hit.value;
    if (this.#redis && this.#ttlMs > 0) {
      const v = await this.#redis.get(`lago-billing:${key}`).catch(() => null);
      if (v !== null) {
        this.#local.set(key, { value: v, expires: Date.now() + Math.min(this.#ttlMs, 30_000) });
        return v;
      }
    }
    return undefined;
  }

  async #remember(key: string, value: string): Promise<void> {
    if (this.#ttlMs <= 0) return;
    this.#local.set(key, { value, expires: Date.now() + this.#ttlMs });
    await this.#redis?.set(`lago-billing:${key}`, value, "PX", this.#ttlMs).catch(() => undefined);
  }

  /** Checks that a known subscription id exists and is active. */
  async check(subscriptionId: string): Promise<Resolution> {
    const key = `sub:${subscriptionId}`;
    if ((await this.#cached(key)) !== undefined) return { ok: true, subscriptionId };
    const res = await this.#get(`/api/v1/subscriptions/${encodeURIComponent(subscriptionId)}`);
    if (res.status === 404) return { ok: false, reason: `Lago has no subscription "${subscriptionId}"` };
    const sub = (res.body as { subscription?: { status?: string } } | null)?.subscription;
    if (sub?.status !== undefined && sub.status !== "active") {
      return { ok: false, reason: `Lago subscription "${subscriptionId}" is ${sub.status}, not active` };
    }
    await this.#remember(key, "1");
    return { ok: true, subscriptionId };
  }

  /** Finds the customer's active subscription (lookup mapping). */
  async lookup(customerId: string): Promise<Resolution> {
    const key = `customer:${customerId}`;
    const cached = await this.#cached(key);
    if (cached !== undefined) return { ok: true, subscriptionId: cached };
    const res = await this.#get(
      `/api/v1/subscriptions?external_customer_id=${encodeURIComponent(customerId)}&status[]=active&per_page=2`,
    );
    if (res.status === 404) return { ok: false, reason: `Lago has no customer "${customerId}"` };
    const subs =
      (res.body as { subscriptions?: { external_id?: string; status?: string }[] } | null)?.subscriptions ??
      [];
    const active = subs.filter(
      (s) => (s.status ?? "active") === "active" && typeof s.external_id === "string",
    );
    if (active.length === 0)
      return { ok: false, reason: `customer "${customerId}" has no active subscription in Lago` };
    if (active.length > 1) {
      return {
        ok: false,
        reason: `customer "${customerId}" has several active subscriptions: use template mapping`,
      };
    }
    const id = active[0]?.external_id as string;
    await this.#remember(key, id);
    return { ok: true, subscriptionId: id };
  }

  /** Checks that a billable metric code exists. */
  async metricExists(code: string): Promise<boolean> {
    const key = `metric:${code}`;
    if ((await this.#cached(key)) !== undefined) return true;
    const res = await this.#get(`/api/v1/billable_metrics/${encodeURIComponent(code)}`);
    if (res.status === 404) return false;
    await this.#remember(key, "1");
    return true;
  }

  async #get(path: string) {
    let res: Awaited<ReturnType<LagoClient["request"]>>;
    try {
      res = await this.#client.request("GET", path);
    } catch (err) {
      throw new LagoUnavailableError(`Lago unreachable: ${(err as Error).message}`, null);
    }
    if (res.status === 200 || res.status === 404) return res;
    throw new LagoUnavailableError(`GET ${path.split("?")[0]} answered ${res.status}`, res.status);
  }
}
