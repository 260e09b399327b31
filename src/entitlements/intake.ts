import { createHash, type KeyObject } from "node:crypto";
import type { Logger } from "pino";
import type { Sql } from "../db/pool.ts";
import { query } from "../db/queries.ts";
import { staticSubscriptionId } from "../lago/mapping.ts";
import type { EntitlementMetrics } from "../metrics.ts";
import type { Settings } from "../settings.ts";
import type { LagoReader } from "./lago-reader.ts";
import { LAGO_WEBHOOK_TYPES, type LagoFact, parseLagoWebhook } from "./lago-webhooks.ts";
import { algorithmOf, parsePublicKey, verifyHmac, verifyJwt } from "./signature.ts";
import { applyAlert, applySubscriptions, applyWallets, type Db, lockCustomer } from "./store.ts";

export interface IntakeDeps {
  sql: Sql;
  settings: Settings;
  reader: LagoReader | null;
  log: Logger;
  metrics: EntitlementMetrics;
  /** Called after a webhook changed a customer (same process: recompute at once). */
  onChanged?: (customerId: string) => void;
}

export interface IntakeResult {
  status: number;
  body: Record<string, unknown>;
}

/** A refetch of Lago's public key (rotation) happens at most this often. */
const KEY_REFETCH_MS = 60_000;

const unauthorized = (message: string): IntakeResult => ({
  status: 401,
  body: { statusCode: 401, error: "Unauthorized", message },
});

/**
 * POST /webhooks/lago: verify, deduplicate, store, apply. A bad or missing signature is a 401 and
 * nothing is stored or changed; a verified webhook is stored once per X-Lago-Unique-Key (a retry is
 * a 200 that changes nothing), whatever its type; what it tells us is applied in the same
 * transaction, never over newer state; the customer is then refreshed from Lago's API, so a lost,
 * late or out-of-order webhook is corrected within seconds.
 */
export class LagoWebhookIntake {
  readonly #d: IntakeDeps;
  #key: KeyObject | null = null;
  #keyFetchedAt = 0;
  #warned = new Set<string>();

  constructor(deps: IntakeDeps) {
    this.#d = deps;
    if (deps.settings.entitlements.publicKey) {
      this.#key = parsePublicKey(deps.settings.entitlements.publicKey);
      this.#keyFetchedAt = Number.POSITIVE_INFINITY; // configured: never refetched
    }
  }

  #warnOnce(key: string, msg: string): void {
    if (this.#warned.has(key)) return;
    this.#warned.add(key);
    this.#d.log.warn(msg);
  }

  async #publicKey(refetch: boolean): Promise<KeyObject | null> {
    if (this.#key && !refetch) return this.#key;
    if (!this.#d.reader || Date.now() - this.#keyFetchedAt < KEY_REFETCH_MS) return this.#key;
    this.#keyFetchedAt = Date.now();
    try {
      this.#key = parsePublicKey(await this.#d.reader.publicKey());
    } catch (err) {
      this.#d.log.warn({ err: (err as Error).message }, "cannot read Lago's webhook public key");
    }
    return this.#key;
  }

  async #verify(raw: Buffer, headers: Record<string, string | string[] | undefined>) {
    const h = (name: string) => {
      const v = headers[name];
      return Array.isArray(v) ? v[0] : v;
    };
    const signature = h("x-lago-signature");
    const algorithm = algorithmOf(h("x-lago-signature-algorithm"));
    if (!signature) return { ok: false as const, reason: "missing X-Lago-Signature" };
    if (!algorithm) {
      return { ok: false as const, reason: "X-Lago-Signature-Algorithm must be hmac or jwt" };
    }
    if (algorithm === "hmac") {
      const key = this.#d.settings.entitlements.hmacKey;
      if (!key) {
        this.#warnOnce(
          "hmac",
          "a Lago webhook signed with HMAC arrived but LAGO_WEBHOOK_HMAC_KEY is not set: every such webhook is refused (401)",
        );
        return {
          ok: false as const,
          reason: "HMAC webhooks are not accepted: LAGO_WEBHOOK_HMAC_KEY is not set",
        };
      }
      return verifyHmac(raw, signature, key)
        ? { ok: true as const, algorithm }
        : { ok: false as const, reason: "X-Lago-Signature does not match the body (HMAC-SHA256)" };
    }
    let key = await this.#publicKey(false);
    if (!key) {
      return {
        ok: false as const,
        reason:
          "JWT webhooks need Lago's public key: set LAGO_WEBHOOK_PUBLIC_KEY, or LAGO_API_URL and LAGO_API_KEY",
      };
    }
    let r = verifyJwt(raw, signature, key);
    if (!r.ok) {
      const again = await this.#publicKey(true); // Lago may have rotated its key
      if (again && again !== key) {
        key = again;
        r = verifyJwt(raw, signature, key);
      }
    }
    return r.ok ? { ok: true as const, algorithm } : { ok: false as const, reason: r.reason };
  }

  async receive(raw: Buffer, headers: Record<string, string | string[] | undefined>): Promise<IntakeResult> {
    const m = this.#d.metrics;
    const v = await this.#verify(raw, headers);
    if (!v.ok) {
      m.webhooks.inc({ type: "unverified", outcome: "bad_signature" });
      this.#d.log.warn({ reason: v.reason }, "Lago webhook refused (401): nothing stored");
      return unauthorized(`${v.reason}; nothing was stored`);
    }
    let body: unknown;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch {
      m.webhooks.inc({ type: "unverified", outcome: "invalid" });
      return {
        status: 400,
        body: { statusCode: 400, error: "Bad Request", message: "the body is not JSON" },
      };
    }
    const parsed = parseLagoWebhook(body);
    const typeLabel = LAGO_WEBHOOK_TYPES.has(parsed.type) ? parsed.type : "unknown";
    const header = headers["x-lago-unique-key"];
    const uniqueKey =
      (Array.isArray(header) ? header[0] : header) ||
      `sha256:${createHash("sha256").update(raw).digest("hex")}`;
    // The customer of a wallet transaction is its wallet's: known from an earlier reading, else asked.
    let customerId = parsed.customerId;
    if (parsed.fact.kind === "wallet_transaction" && !customerId) {
      customerId = await this.#walletCustomer(parsed.fact.walletId);
    }
    const result = await this.#d.sql.begin(async (tx) => {
      const [stored] = await tx.unsafe<{ id: string; inserted: boolean; outcome: string }[]>(
        query("lago_webhook_insert"),
        [
          uniqueKey,
          parsed.type || "(none)",
          parsed.objectType,
          v.algorithm,
          customerId,
          raw.toString("utf8"),
          "ignored",
          null,
        ],
      );
      if (!stored?.inserted)
        return { duplicate: true as const, outcome: stored?.outcome ?? "ignored", detail: null };
      const { outcome, detail } = await this.#apply(tx, parsed.fact, customerId);
      await tx`UPDATE lago_webhooks SET outcome = ${outcome}, detail = ${detail} WHERE id = ${stored.id}`;
      if (customerId && outcome !== "unknown" && outcome !== "ignored") {
        // Confirm with Lago's API at once: it is the truth for whatever this webhook was about.
        await tx`UPDATE entitlements SET next_refresh_at = now() WHERE customer_id = ${customerId}`;
        await tx`SELECT pg_notify('entitlements', ${customerId})`;
      }
      return { duplicate: false as const, outcome, detail };
    });
    m.webhooks.inc({ type: typeLabel, outcome: result.duplicate ? "duplicate" : result.outcome });
    if (!result.duplicate && customerId && result.outcome !== "ignored" && result.outcome !== "unknown") {
      this.#d.onChanged?.(customerId);
    }
    if (result.outcome === "unknown" && !result.duplicate) {
      this.#d.log.info(
        { type: parsed.type },
        "Lago webhook of a type this service does not know: stored, ignored",
      );
    }
    return {
      status: 200,
      body: {
        received: true,
        duplicate: result.duplicate,
        webhook_type: parsed.type,
        outcome: result.outcome,
        ...(result.detail ? { detail: result.detail } : {}),
      },
    };
  }

  async #walletCustomer(walletId: string): Promise<string | null> {
    const [w] = await this.#d.sql<{ customer_id: string }[]>`
      SELECT customer_id FROM entitlement_wallets WHERE lago_id = ${walletId}`;
    if (w) return w.customer_id;
    try {
      return (await this.#d.reader?.wallet(walletId))?.customerId ?? null;
    } catch (err) {
      this.#d.log.warn(
        { wallet: walletId, err: (err as Error).message },
        "cannot find the customer of a wallet",
      );
      return null;
    }
  }

  async #apply(
    tx: Db,
    fact: LagoFact,
    customerId: string | null,
  ): Promise<{ outcome: string; detail: string | null }> {
    const now = new Date();
    switch (fact.kind) {
      case "unknown":
        return { outcome: "unknown", detail: null };
      case "ignored":
        return { outcome: "ignored", detail: null };
      case "wallet": {
        const row = await lockCustomer(tx, fact.customerId);
        const r = await applyWallets(
          tx,
          row,
          [fact.wallet],
          "webhook",
          now,
          this.#d.settings.entitlements.priceMarkupPercent,
        );
        return r.stale > 0
          ? { outcome: "stale", detail: "older than the wallet state already known" }
          : { outcome: "applied", detail: null };
      }
      case "subscription": {
        const row = await lockCustomer(tx, fact.customerId);
        const r = await applySubscriptions(tx, row, [fact.subscription], {
          source: "webhook",
          complete: false,
          expectedExternalId: staticSubscriptionId(this.#d.settings.lago, fact.customerId),
          now,
        });
        return r.stale > 0
          ? {
              outcome: "stale",
              detail: `subscription already ${fact.subscription.status === "active" ? "ended" : "further along"}`,
            }
          : { outcome: "applied", detail: null };
      }
      case "alert": {
        const row = await lockCustomer(tx, fact.customerId);
        const e = this.#d.settings.entitlements;
        const r = await applyAlert(tx, row, fact, e.limitThresholdCode, now, e.priceMarkupPercent);
        return r === "stale"
          ? { outcome: "stale", detail: "older than the usage already known" }
          : r === "ignored"
            ? { outcome: "refresh", detail: "not the spending limit's threshold" }
            : { outcome: "applied", detail: null };
      }
      case "wallet_transaction":
      case "refresh": {
        if (!customerId) return { outcome: "unmatched", detail: "no customer found for it" };
        await lockCustomer(tx, customerId);
        return { outcome: "refresh", detail: null };
      }
    }
  }
}
