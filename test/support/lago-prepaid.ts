/**
 * The prepaid side of the Lago double (test/support/lago-double.ts): wallets and their
 * transactions, usage alerts, current usage, the webhook public key, and Lago's outbound webhooks,
 * signed as Lago signs them, sent to registered endpoints.
 *
 * Each shape follows the Lago file named beside it (getlago/lago-api):
 *   wallets            app/serializers/v1/wallet_serializer.rb; GET /api/v1/wallets?external_customer_id=
 *                      lists active and terminated ones (app/controllers/concerns/wallet_index.rb)
 *   wallet transactions app/serializers/v1/wallet_transaction_serializer.rb (lago_wallet_id, no customer)
 *   ongoing balance    recomputed only when Lago's clock runs (clock.rb, every 5 minutes): here when a
 *                      test calls refreshOngoingBalances(); balance_cents changes on top-ups and
 *                      consumption at once (last_balance_sync_at moves)
 *   alerts             app/serializers/v1/usage_monitoring/alert_serializer.rb, GET
 *                      /api/v1/subscriptions/:external_id/alerts; current_usage_amount thresholds in cents
 *   current usage      GET /api/v1/customers/:id/current_usage (root customer_usage, amount_cents)
 *   public key         GET /api/v1/webhooks/json_public_key → {webhook: {public_key: Base64.encode64(PEM)}}
 *   webhooks           {webhook_type, object_type, organization_id, <object_type>: ...}
 *                      (app/services/webhooks/base_service.rb); headers X-Lago-Signature,
 *                      X-Lago-Signature-Algorithm (jwt|hmac), X-Lago-Unique-Key (app/models/webhook.rb)
 *
 * Usage is priced by `pricer(event)` (cents; default: the event's precise_total_amount_cents, i.e.
 * cost mode), only for events inside the current calendar month.
 */
import { createHmac, generateKeyPairSync, type KeyObject, randomBytes, randomUUID, sign } from "node:crypto";
import type { LagoDouble, StoredEvent, SubscriptionRecord } from "./lago-double.ts";

type Json = Record<string, unknown>;

export interface WalletRecord {
  lago_id: string;
  external_customer_id: string;
  lago_customer_id: string;
  status: "active" | "terminated";
  currency: string;
  name: string | null;
  rate_amount: string;
  /** Settled balance in cents (top-ups in, invoices paid out). */
  balance_cents: number;
  /** Lago's view at its last recompute: current usage allocated to the wallet. */
  ongoing_usage_balance_cents: number;
  consumed_credits: string;
  created_at: string;
  last_balance_sync_at: string | null;
  last_consumed_credit_at: string | null;
  terminated_at: string | null;
  depleted_ongoing_balance: boolean;
}

export interface WalletTransactionRecord {
  lago_id: string;
  lago_wallet_id: string;
  status: "pending" | "settled" | "failed";
  transaction_type: "inbound" | "outbound";
  transaction_status: "purchased" | "granted" | "invoiced" | "voided";
  amount: string;
  credit_amount: string;
  created_at: string;
  settled_at: string | null;
}

export interface AlertRecord {
  lago_id: string;
  subscription_external_id: string;
  alert_type: string;
  code: string;
  name: string | null;
  thresholds: { code: string | null; value: string; recurring: boolean }[];
}

export type SignatureAlgorithm = "hmac" | "jwt";

export interface WebhookEndpoint {
  url: string;
  algorithm: SignatureAlgorithm;
}

export interface SentWebhook {
  uniqueKey: string;
  type: string;
  body: string;
  headers: Record<string, string>;
  status: number;
  response: unknown;
}

const nowIso = () => new Date().toISOString().replace(/\.\d{3}Z$/, "Z");

function monthStart(): Date {
  const d = new Date();
  d.setUTCDate(1);
  d.setUTCHours(0, 0, 0, 0);
  return d;
}

function monthEnd(): Date {
  const d = monthStart();
  d.setUTCMonth(d.getUTCMonth() + 1);
  return new Date(d.getTime() - 1000);
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

/** Ruby's Base64.encode64: lines of 60 characters, each ending in a newline. */
function encode64(text: string): string {
  const b = Buffer.from(text).toString("base64");
  return `${b.match(/.{1,60}/g)?.join("\n") ?? ""}\n`;
}

export class LagoPrepaid {
  readonly #lago: LagoDouble;
  readonly wallets = new Map<string, WalletRecord>();
  readonly transactions: WalletTransactionRecord[] = [];
  readonly alerts: AlertRecord[] = [];
  readonly endpoints: WebhookEndpoint[] = [];
  readonly sent: SentWebhook[] = [];
  readonly organizationId = randomUUID();
  /** The organization's HMAC key (Lago → Developers → Webhooks). */
  hmacKey = randomBytes(24).toString("hex");
  #keys: { privateKey: KeyObject; publicKeyPem: string } | null = null;
  /** Cents of one stored event against wallets and limits. */
  pricer: (e: StoredEvent) => number = (e) => Number(e.precise_total_amount_cents ?? 0);
  /** Requests per second on the read endpoints of this file (null: unlimited, 0: none); 429 above. */
  readRateLimitPerSecond: number | null = null;
  readRequests = 0;
  read429 = 0;
  #window = { start: 0, count: 0 };

  constructor(lago: LagoDouble) {
    this.#lago = lago;
  }

  /** Lago's RSA key pair (RsaPrivateKey / RsaPublicKey), made on first use: 2048 bits take a while. */
  get #pair(): { privateKey: KeyObject; publicKeyPem: string } {
    if (!this.#keys) {
      const pair = generateKeyPairSync("rsa", { modulusLength: 2048 });
      this.#keys = {
        privateKey: pair.privateKey,
        publicKeyPem: pair.publicKey.export({ type: "spki", format: "pem" }).toString(),
      };
    }
    return this.#keys;
  }

  get privateKey(): KeyObject {
    return this.#pair.privateKey;
  }

  get publicKeyPem(): string {
    return this.#pair.publicKeyPem;
  }

  reset(): void {
    this.wallets.clear();
    this.transactions.length = 0;
    this.alerts.length = 0;
    this.sent.length = 0;
    this.readRequests = 0;
    this.read429 = 0;
  }

  // ---------------------------------------------------------------- serializers

  /** app/serializers/v1/wallet_serializer.rb */
  walletJson(w: WalletRecord): Json {
    const rate = Number(w.rate_amount);
    const ongoing = w.balance_cents - w.ongoing_usage_balance_cents;
    return {
      lago_id: w.lago_id,
      lago_customer_id: w.lago_customer_id,
      external_customer_id: w.external_customer_id,
      status: w.status,
      currency: w.currency,
      name: w.name,
      rate_amount: w.rate_amount,
      credits_balance: String(w.balance_cents / 100 / rate),
      credits_ongoing_balance: String(ongoing / 100 / rate),
      credits_ongoing_usage_balance: String(w.ongoing_usage_balance_cents / 100 / rate),
      balance_cents: w.balance_cents,
      ongoing_balance_cents: ongoing,
      ongoing_usage_balance_cents: w.ongoing_usage_balance_cents,
      consumed_credits: w.consumed_credits,
      created_at: w.created_at,
      expiration_at: null,
      last_balance_sync_at: w.last_balance_sync_at,
      last_consumed_credit_at: w.last_consumed_credit_at,
      terminated_at: w.terminated_at,
      invoice_requires_successful_payment: false,
      paid_top_up_min_amount_cents: null,
      paid_top_up_max_amount_cents: null,
      priority: 50,
      recurring_transaction_rules: [],
      applies_to: { fee_types: [], billable_metric_codes: [] },
    };
  }

  /** app/serializers/v1/wallet_transaction_serializer.rb (as the webhook sends it: no wallet). */
  transactionJson(t: WalletTransactionRecord): Json {
    return {
      lago_id: t.lago_id,
      lago_wallet_id: t.lago_wallet_id,
      lago_invoice_id: null,
      lago_credit_note_id: null,
      lago_voided_invoice_id: null,
      billing_entity_code: null,
      status: t.status,
      source: "manual",
      transaction_status: t.transaction_status,
      transaction_type: t.transaction_type,
      amount: t.amount,
      credit_amount: t.credit_amount,
      remaining_amount_cents: null,
      remaining_credit_amount: null,
      priority: 50,
      purchase_order_number: null,
      settled_at: t.settled_at,
      failed_at: null,
      created_at: t.created_at,
      invoice_requires_successful_payment: false,
      metadata: [],
      name: null,
      payment_method: { payment_method_id: null, payment_method_type: "provider" },
    };
  }

  /** app/serializers/v1/subscription_serializer.rb with includes customer and plan. */
  subscriptionJson(s: SubscriptionRecord): Json {
    const customer = this.#lago.customers.get(s.external_customer_id);
    return {
      lago_id: s.lago_id,
      external_id: s.external_id,
      lago_customer_id: s.lago_customer_id,
      external_customer_id: s.external_customer_id,
      name: s.name,
      plan_code: s.plan_code,
      status: s.status,
      billing_time: s.billing_time,
      subscription_at: s.subscription_at,
      started_at: s.started_at,
      trial_ended_at: null,
      ending_at: s.ending_at,
      terminated_at: s.terminated_at,
      canceled_at: s.canceled_at,
      created_at: s.created_at,
      previous_plan_code: null,
      next_plan_code: null,
      downgrade_plan_date: null,
      ...this.periodOf(s),
      customer: customer ?? { external_id: s.external_customer_id },
      plan: { code: s.plan_code },
    };
  }

  /**
   * current_billing_period_started_at / _ending_at as the subscription serializer gives them:
   * calendar billing, monthly, so the period started on the 1st (or at the start, if later).
   */
  periodOf(s: SubscriptionRecord): Json {
    if (s.started_at === null || s.status !== "active") {
      return { current_billing_period_started_at: null, current_billing_period_ending_at: null };
    }
    return {
      current_billing_period_started_at: new Date(
        Math.max(Date.parse(s.started_at), monthStart().getTime()),
      ).toISOString(),
      current_billing_period_ending_at: monthEnd().toISOString(),
    };
  }

  // ---------------------------------------------------------------- wallets

  /** A wallet with `cents` of paid credits, settled (POST /api/v1/wallets with paid_credits). */
  createWallet(
    customerId: string,
    cents: number,
    opts: { currency?: string; rateAmount?: string } = {},
  ): WalletRecord {
    const customer = this.#lago.customers.get(customerId);
    const w: WalletRecord = {
      lago_id: randomUUID(),
      external_customer_id: customerId,
      lago_customer_id: customer?.lago_id ?? randomUUID(),
      status: "active",
      currency: opts.currency ?? "USD",
      name: null,
      rate_amount: opts.rateAmount ?? "1.0",
      balance_cents: 0,
      ongoing_usage_balance_cents: 0,
      consumed_credits: "0.0",
      created_at: nowIso(),
      last_balance_sync_at: null,
      last_consumed_credit_at: null,
      terminated_at: null,
      depleted_ongoing_balance: false,
    };
    this.wallets.set(w.lago_id, w);
    if (cents > 0) this.topUp(w.lago_id, cents);
    return w;
  }

  /** A settled inbound transaction (paid credits): the balance grows at once. */
  topUp(walletId: string, cents: number): WalletTransactionRecord {
    const w = this.#wallet(walletId);
    const t: WalletTransactionRecord = {
      lago_id: randomUUID(),
      lago_wallet_id: walletId,
      status: "settled",
      transaction_type: "inbound",
      transaction_status: "purchased",
      amount: (cents / 100).toFixed(2),
      credit_amount: (cents / 100 / Number(w.rate_amount)).toFixed(5),
      created_at: nowIso(),
      settled_at: nowIso(),
    };
    this.transactions.push(t);
    w.balance_cents += cents;
    w.last_balance_sync_at = new Date().toISOString();
    // Lago recomputes the ongoing balance on every increase (app/services/wallets/balance/
    // increase_service.rb calls Wallets::Balance::RefreshOngoingService).
    this.refreshWallet(w);
    return t;
  }

  terminateWallet(walletId: string): WalletRecord {
    const w = this.#wallet(walletId);
    w.status = "terminated";
    w.terminated_at = nowIso();
    return w;
  }

  /** Usage priced by `pricer` for the customer's events in the current calendar month. */
  usageCents(customerId: string, subscriptionExternalId?: string): number {
    const start = new Date();
    start.setUTCDate(1);
    start.setUTCHours(0, 0, 0, 0);
    const subs = new Set(
      this.#lago.allSubscriptions
        .filter((s) => s.external_customer_id === customerId)
        .filter((s) => subscriptionExternalId === undefined || s.external_id === subscriptionExternalId)
        .map((s) => s.external_id),
    );
    let cents = 0;
    for (const e of this.#lago.billedEvents()) {
      if (e.external_subscription_id === null || !subs.has(e.external_subscription_id)) continue;
      if (e.timestamp * 1000 < start.getTime()) continue;
      cents += this.pricer(e);
    }
    return cents;
  }

  /**
   * Lago's clock: each active wallet's ongoing usage becomes the customer's current usage (first
   * wallet only, as one wallet is all these tests use). Returns the wallets that went to depleted
   * (Lago would send wallet.depleted_ongoing_balance for them: see sendWalletWebhook).
   */
  refreshOngoingBalances(): WalletRecord[] {
    const depleted: WalletRecord[] = [];
    for (const w of this.wallets.values()) {
      if (w.status === "active" && this.refreshWallet(w)) depleted.push(w);
    }
    return depleted;
  }

  /** One wallet's recompute (RefreshOngoingService); true when it just became depleted. */
  refreshWallet(w: WalletRecord): boolean {
    w.ongoing_usage_balance_cents = Math.round(this.usageCents(w.external_customer_id));
    const ongoing = w.balance_cents - w.ongoing_usage_balance_cents;
    if (!w.depleted_ongoing_balance && ongoing <= 0) {
      w.depleted_ongoing_balance = true;
      return true;
    }
    if (ongoing > 0) w.depleted_ongoing_balance = false;
    return false;
  }

  #wallet(id: string): WalletRecord {
    const w = this.wallets.get(id);
    if (!w) throw new Error(`no wallet ${id}`);
    return w;
  }

  addAlert(
    subscriptionExternalId: string,
    alert: {
      alertType?: string;
      code?: string;
      thresholds: { code: string | null; value: string; recurring?: boolean }[];
    },
  ): AlertRecord {
    const a: AlertRecord = {
      lago_id: randomUUID(),
      subscription_external_id: subscriptionExternalId,
      alert_type: alert.alertType ?? "current_usage_amount",
      code: alert.code ?? "spending",
      name: null,
      thresholds: alert.thresholds.map((t) => ({
        code: t.code,
        value: t.value,
        recurring: t.recurring ?? false,
      })),
    };
    this.alerts.push(a);
    return a;
  }

  // ---------------------------------------------------------------- HTTP (called by the double)

  /** Handles the routes of this file; undefined when the path is not one of them. */
  route(
    method: string,
    parts: string[],
    query: URLSearchParams,
    json: unknown,
  ): { status: number; body: Json; headers?: Record<string, string> } | undefined {
    const [resource, rawId, extra] = parts;
    const id = rawId === undefined ? undefined : decodeURIComponent(rawId);
    const isRead = method === "GET";
    const mine =
      resource === "wallets" ||
      resource === "wallet_transactions" ||
      (resource === "webhooks" && id === "json_public_key") ||
      (resource === "subscriptions" && extra === "alerts") ||
      (resource === "customers" && extra === "current_usage");
    if (!mine) return undefined;
    if (isRead) {
      this.readRequests++;
      const limit = this.readRateLimitPerSecond;
      if (limit !== null) {
        const now = Date.now();
        if (now - this.#window.start >= 1000) this.#window = { start: now, count: 0 };
        if (this.#window.count >= limit) {
          this.read429++;
          return {
            status: 429,
            body: { status: 429, error: "Too Many Requests" },
            headers: {
              "x-ratelimit-limit": String(limit),
              "x-ratelimit-remaining": "0",
              "x-ratelimit-reset": String(Math.max(1, Math.ceil((this.#window.start + 1000 - now) / 1000))),
            },
          };
        }
        this.#window.count++;
      }
    }
    const notFound = (what: string) => ({
      status: 404,
      body: { status: 404, error: "Not Found", code: `${what}_not_found` },
    });
    if (resource === "webhooks") {
      return { status: 200, body: { webhook: { public_key: encode64(this.publicKeyPem) } } };
    }
    if (resource === "wallets") {
      if (method === "GET" && id === undefined) {
        const customer = query.get("external_customer_id");
        if (
          customer !== null &&
          !this.#lago.customers.has(customer) &&
          ![...this.wallets.values()].some((w) => w.external_customer_id === customer)
        ) {
          return notFound("customer");
        }
        const list = [...this.wallets.values()].filter(
          (w) => customer === null || w.external_customer_id === customer,
        );
        return {
          status: 200,
          body: {
            wallets: list.map((w) => this.walletJson(w)),
            meta: {
              current_page: 1,
              next_page: null,
              prev_page: null,
              total_pages: 1,
              total_count: list.length,
            },
          },
        };
      }
      if (method === "GET" && id !== undefined) {
        const w = this.wallets.get(id);
        return w ? { status: 200, body: { wallet: this.walletJson(w) } } : notFound("wallet");
      }
      if (method === "POST" && id === undefined) {
        const p = (json as { wallet?: Json } | undefined)?.wallet ?? {};
        const customer = String(p.external_customer_id ?? "");
        const rate = String(p.rate_amount ?? "1.0");
        const credits = Number(p.paid_credits ?? 0) + Number(p.granted_credits ?? 0);
        const w = this.createWallet(customer, Math.round(credits * Number(rate) * 100), {
          currency: typeof p.currency === "string" ? p.currency : "USD",
          rateAmount: rate,
        });
        return { status: 200, body: { wallet: this.walletJson(w) } };
      }
    }
    if (resource === "wallet_transactions" && method === "POST" && id === undefined) {
      const p = (json as { wallet_transaction?: Json } | undefined)?.wallet_transaction ?? {};
      const w = this.wallets.get(String(p.wallet_id ?? ""));
      if (!w) return notFound("wallet");
      const credits = Number(p.paid_credits ?? 0) + Number(p.granted_credits ?? 0);
      const t = this.topUp(w.lago_id, Math.round(credits * Number(w.rate_amount) * 100));
      return { status: 200, body: { wallet_transactions: [this.transactionJson(t)] } };
    }
    if (resource === "subscriptions" && extra === "alerts" && method === "GET" && id !== undefined) {
      if (!this.#lago.allSubscriptions.some((s) => s.external_id === id)) return notFound("subscription");
      const list = this.alerts.filter((a) => a.subscription_external_id === id);
      return {
        status: 200,
        body: {
          alerts: list.map((a) => ({
            lago_id: a.lago_id,
            lago_organization_id: this.organizationId,
            subscription_external_id: a.subscription_external_id,
            alert_type: a.alert_type,
            code: a.code,
            name: a.name,
            previous_value: "0.0",
            last_processed_at: null,
            thresholds: a.thresholds,
            created_at: nowIso(),
            billable_metric: null,
          })),
          meta: {
            current_page: 1,
            next_page: null,
            prev_page: null,
            total_pages: 1,
            total_count: list.length,
          },
        },
      };
    }
    if (resource === "customers" && extra === "current_usage" && method === "GET" && id !== undefined) {
      const subId = query.get("external_subscription_id");
      const sub = this.#lago.allSubscriptions.find(
        (s) => s.external_id === subId && s.external_customer_id === id,
      );
      if (!sub) return notFound("subscription");
      const start = new Date();
      start.setUTCDate(1);
      start.setUTCHours(0, 0, 0, 0);
      const end = new Date(start);
      end.setUTCMonth(end.getUTCMonth() + 1);
      const cents = Math.round(this.usageCents(id, sub.external_id));
      return {
        status: 200,
        body: {
          customer_usage: {
            from_datetime: start.toISOString(),
            to_datetime: new Date(end.getTime() - 1000).toISOString(),
            issuing_date: end.toISOString().slice(0, 10),
            currency: "USD",
            amount_cents: cents,
            total_amount_cents: cents,
            taxes_amount_cents: 0,
            lago_invoice_id: null,
            charges_usage: [],
          },
        },
      };
    }
    return { status: 404, body: { status: 404, error: "Not Found" } };
  }

  // ---------------------------------------------------------------- outbound webhooks

  addWebhookEndpoint(url: string, algorithm: SignatureAlgorithm = "jwt"): void {
    this.endpoints.push({ url, algorithm });
  }

  /** X-Lago-Signature for a body (app/models/webhook.rb#jwt_signature / #hmac_signature). */
  signature(body: string, algorithm: SignatureAlgorithm): string {
    if (algorithm === "hmac") return createHmac("sha256", this.hmacKey).update(body).digest("base64");
    const header = b64url(JSON.stringify({ alg: "RS256" }));
    const claims = b64url(JSON.stringify({ data: body, iss: this.#lago.url }));
    const sig = sign("RSA-SHA256", Buffer.from(`${header}.${claims}`), this.privateKey);
    return `${header}.${claims}.${b64url(sig)}`;
  }

  /** The body Lago posts (payload.to_json): the object under its object_type. */
  payload(type: string, objectType: string, object: Json): string {
    return JSON.stringify({
      webhook_type: type,
      object_type: objectType,
      organization_id: this.organizationId,
      [objectType]: object,
    });
  }

  /**
   * Sends one webhook to every endpoint (or `opts.to`), signed with each endpoint's algorithm;
   * `tamper` changes the body after signing; `signatureOverride` replaces the signature.
   */
  async send(
    type: string,
    objectType: string,
    object: Json,
    opts: {
      uniqueKey?: string;
      to?: WebhookEndpoint[];
      tamper?: (body: string) => string;
      signatureOverride?: string | null;
    } = {},
  ): Promise<SentWebhook[]> {
    const body = this.payload(type, objectType, object);
    const uniqueKey = opts.uniqueKey ?? randomUUID();
    const out: SentWebhook[] = [];
    for (const ep of opts.to ?? this.endpoints) {
      out.push(await this.post(ep, type, body, uniqueKey, opts));
    }
    return out;
  }

  /** A retry of a sent webhook: same body, same unique key (SendHttpWebhookJob after a failure). */
  async resend(w: SentWebhook, to: WebhookEndpoint[] = this.endpoints): Promise<SentWebhook[]> {
    const out: SentWebhook[] = [];
    for (const ep of to) out.push(await this.post(ep, w.type, w.body, w.uniqueKey, {}));
    return out;
  }

  private async post(
    ep: WebhookEndpoint,
    type: string,
    signed: string,
    uniqueKey: string,
    opts: { tamper?: (body: string) => string; signatureOverride?: string | null },
  ): Promise<SentWebhook> {
    const sig =
      opts.signatureOverride === undefined ? this.signature(signed, ep.algorithm) : opts.signatureOverride;
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "x-lago-signature-algorithm": ep.algorithm,
      "x-lago-unique-key": uniqueKey,
    };
    if (sig !== null) headers["x-lago-signature"] = sig;
    const body = opts.tamper ? opts.tamper(signed) : signed;
    const res = await fetch(ep.url, { method: "POST", headers, body });
    const text = await res.text();
    let response: unknown = text;
    try {
      response = JSON.parse(text);
    } catch {
      // keep the text
    }
    const sent = { uniqueKey, type, body: signed, headers, status: res.status, response };
    this.sent.push(sent);
    return sent;
  }

  sendWalletWebhook(
    type: "wallet.created" | "wallet.updated" | "wallet.terminated" | "wallet.depleted_ongoing_balance",
    walletId: string,
    opts: Parameters<LagoPrepaid["send"]>[3] = {},
  ): Promise<SentWebhook[]> {
    return this.send(type, "wallet", this.walletJson(this.#wallet(walletId)), opts);
  }

  sendTransactionWebhook(
    type: "wallet_transaction.created" | "wallet_transaction.updated",
    t: WalletTransactionRecord,
    opts: Parameters<LagoPrepaid["send"]>[3] = {},
  ): Promise<SentWebhook[]> {
    return this.send(type, "wallet_transaction", this.transactionJson(t), opts);
  }

  sendSubscriptionWebhook(
    type:
      | "subscription.started"
      | "subscription.terminated"
      | "subscription.updated"
      | "subscription.canceled",
    s: SubscriptionRecord,
    opts: Parameters<LagoPrepaid["send"]>[3] = {},
  ): Promise<SentWebhook[]> {
    return this.send(type, "subscription", this.subscriptionJson(s), opts);
  }

  /** alert.triggered (app/serializers/v1/usage_monitoring/triggered_alert_serializer.rb). */
  sendAlertTriggered(
    alert: AlertRecord,
    customerId: string,
    currentValueCents: number,
    crossed: AlertRecord["thresholds"],
    opts: Parameters<LagoPrepaid["send"]>[3] & { at?: Date } = {},
  ): Promise<SentWebhook[]> {
    const sub = this.#lago.allSubscriptions.find((s) => s.external_id === alert.subscription_external_id);
    return this.send(
      "alert.triggered",
      "triggered_alert",
      {
        lago_id: randomUUID(),
        lago_organization_id: this.organizationId,
        lago_alert_id: alert.lago_id,
        lago_subscription_id: sub?.lago_id ?? null,
        subscription_external_id: alert.subscription_external_id,
        customer_external_id: customerId,
        billable_metric_code: null,
        alert_name: alert.name,
        alert_code: alert.code,
        alert_type: alert.alert_type,
        current_value: String(currentValueCents),
        previous_value: "0.0",
        crossed_thresholds: crossed,
        triggered_at: (opts.at ?? new Date()).toISOString(),
      },
      opts,
    );
  }
}
