import { type LagoClient, type LagoResponse, rateLimitWait } from "../lago/client.ts";
import { LagoUnavailableError } from "../lago/subscriptions.ts";
import {
  type SubscriptionReading,
  subscriptionFromLago,
  type WalletReading,
  walletFromLago,
} from "./lago-webhooks.ts";

/** A Lago alert (app/serializers/v1/usage_monitoring/alert_serializer.rb). */
export interface AlertReading {
  alertType: string;
  code: string;
  thresholds: { code: string | null; value: string; recurring: boolean }[];
}

/** GET /api/v1/customers/:id/current_usage (app/serializers/v1/customers/usage_serializer.rb). */
export interface UsageReading {
  amountCents: string;
  currency: string | null;
  fromDatetime: Date | null;
  toDatetime: Date | null;
}

/** Requests per second, shared by every read of one process (Lago Cloud: 50/s on these endpoints). */
export class RateLimiter {
  readonly #intervalMs: number;
  #next = 0;
  #pausedUntil = 0;

  constructor(perSecond: number) {
    this.#intervalMs = 1000 / perSecond;
  }

  /** Waits for the next slot (and any pause a 429 asked for). */
  async take(): Promise<void> {
    const now = Date.now();
    const at = Math.max(now, this.#next, this.#pausedUntil);
    this.#next = at + this.#intervalMs;
    if (at > now) await new Promise((r) => setTimeout(r, at - now));
  }

  /** A 429: nothing is sent before `ms` from now. */
  pause(ms: number): void {
    this.#pausedUntil = Math.max(this.#pausedUntil, Date.now() + ms);
  }

  get pausedForMs(): number {
    return Math.max(0, this.#pausedUntil - Date.now());
  }
}

/**
 * The Lago reads of the entitlement refresh, through the service's Lago client, paced by a shared
 * rate limiter; a 429 pauses every read for what Lago asked (Retry-After or X-RateLimit-Reset, read
 * as delivery reads them), capped at `maxPauseMs`, and the read fails (the customer is retried later).
 */
export class LagoReader {
  readonly #client: LagoClient;
  readonly #limiter: RateLimiter;
  readonly #maxPauseMs: number;
  requests = 0;
  rateLimited = 0;

  readonly #onRateLimited: () => void;

  constructor(
    client: LagoClient,
    limiter: RateLimiter,
    maxPauseMs: number,
    onRateLimited: () => void = () => {},
  ) {
    this.#client = client;
    this.#limiter = limiter;
    this.#maxPauseMs = maxPauseMs;
    this.#onRateLimited = onRateLimited;
  }

  /** Every wallet of the customer, active and terminated (app/controllers/api/v1/wallets_controller.rb#index). */
  async wallets(customerId: string): Promise<WalletReading[]> {
    const list: WalletReading[] = [];
    for (let page = 1; page <= 10; page++) {
      const res = await this.#get(
        `/api/v1/wallets?external_customer_id=${encodeURIComponent(customerId)}&per_page=100&page=${page}`,
      );
      if (res.status === 404) return list; // customer_not_found: no wallet
      const body = res.body as { wallets?: unknown[]; meta?: { next_page?: number | null } } | null;
      for (const w of body?.wallets ?? []) {
        const r = walletFromLago(w);
        if (r) list.push(r);
      }
      if (!body?.meta?.next_page) break;
    }
    return list;
  }

  /** One wallet by Lago id, or null (404). */
  async wallet(lagoId: string): Promise<WalletReading | null> {
    const res = await this.#get(`/api/v1/wallets/${encodeURIComponent(lagoId)}`);
    if (res.status === 404) return null;
    return walletFromLago((res.body as { wallet?: unknown } | null)?.wallet);
  }

  /** Active, pending and terminated subscriptions of the customer, in one list call. */
  async subscriptions(customerId: string): Promise<SubscriptionReading[]> {
    const res = await this.#get(
      `/api/v1/subscriptions?external_customer_id=${encodeURIComponent(customerId)}` +
        "&status[]=active&status[]=pending&status[]=terminated&status[]=canceled&per_page=100",
    );
    if (res.status === 404) return [];
    const list = (res.body as { subscriptions?: unknown[] } | null)?.subscriptions ?? [];
    return list.map(subscriptionFromLago).filter((s): s is SubscriptionReading => s !== null);
  }

  /** The alerts of a subscription (app/controllers/api/v1/subscriptions/alerts_controller.rb#index). */
  async alerts(subscriptionExternalId: string): Promise<AlertReading[]> {
    const res = await this.#get(`/api/v1/subscriptions/${encodeURIComponent(subscriptionExternalId)}/alerts`);
    if (res.status === 404) return [];
    const list = (res.body as { alerts?: unknown[] } | null)?.alerts ?? [];
    const out: AlertReading[] = [];
    for (const raw of list) {
      const a = raw as { alert_type?: unknown; code?: unknown; thresholds?: unknown };
      if (typeof a.alert_type !== "string") continue;
      const thresholds = Array.isArray(a.thresholds) ? a.thresholds : [];
      out.push({
        alertType: a.alert_type,
        code: typeof a.code === "string" ? a.code : "",
        thresholds: thresholds.flatMap((t) => {
          const th = t as { code?: unknown; value?: unknown; recurring?: unknown };
          const value = typeof th.value === "number" ? String(th.value) : th.value;
          return typeof value === "string" && /^\d+(\.\d+)?$/.test(value)
            ? [
                {
                  code: typeof th.code === "string" ? th.code : null,
                  value,
                  recurring: th.recurring === true,
                },
              ]
            : [];
        }),
      });
    }
    return out;
  }

  /** The subscription's usage in the current billing period, or null (404). */
  async currentUsage(customerId: string, subscriptionExternalId: string): Promise<UsageReading | null> {
    const res = await this.#get(
      `/api/v1/customers/${encodeURIComponent(customerId)}/current_usage` +
        `?external_subscription_id=${encodeURIComponent(subscriptionExternalId)}`,
    );
    if (res.status === 404) return null;
    const u = (res.body as { customer_usage?: Record<string, unknown> } | null)?.customer_usage;
    if (!u) return null;
    const amount =
      typeof u.amount_cents === "number" ? String(u.amount_cents) : String(u.amount_cents ?? "0");
    const date = (v: unknown) => (typeof v === "string" && !Number.isNaN(Date.parse(v)) ? new Date(v) : null);
    return {
      amountCents: /^-?\d+(\.\d+)?$/.test(amount) ? amount : "0",
      currency: typeof u.currency === "string" ? u.currency : null,
      fromDatetime: date(u.from_datetime),
      toDatetime: date(u.to_datetime),
    };
  }

  /** Lago's webhook public key, as served (the base64 of a PEM). */
  async publicKey(): Promise<string> {
    const res = await this.#get("/api/v1/webhooks/json_public_key");
    const key = (res.body as { webhook?: { public_key?: unknown } } | null)?.webhook?.public_key;
    if (res.status !== 200 || typeof key !== "string") {
      throw new LagoUnavailableError(
        `GET /api/v1/webhooks/json_public_key answered ${res.status} without a key`,
        res.status,
      );
    }
    return key;
  }

  async #get(path: string): Promise<LagoResponse> {
    const route = path.split("?")[0];
    // A 429 pauses every read for what Lago asked; this one is sent again after it (3 tries).
    for (let attempt = 1; ; attempt++) {
      await this.#limiter.take();
      this.requests++;
      let res: LagoResponse;
      try {
        res = await this.#client.request("GET", path);
      } catch (err) {
        throw new LagoUnavailableError(`Lago unreachable: ${(err as Error).message}`, null);
      }
      if (res.status === 200 || res.status === 404) return res;
      if (res.status !== 429)
        throw new LagoUnavailableError(`GET ${route} answered ${res.status}`, res.status);
      this.rateLimited++;
      this.#onRateLimited();
      const wait = rateLimitWait(res.headers, Date.now());
      this.#limiter.pause(
        Math.min(this.#maxPauseMs, wait ? Math.max(100, wait.seconds * 1000) : 1000 * attempt),
      );
      if (attempt >= 3) throw new LagoUnavailableError(`GET ${route} answered 429`, 429, wait);
    }
  }
}
