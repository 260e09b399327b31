/**
 * Lago's outbound webhooks, as Lago builds them: `{webhook_type, object_type, organization_id,
 * <object_type>: <serialized object>}` (app/services/webhooks/base_service.rb#call). Each type this
 * service acts on is named here with the Lago file that sends it and the serializer of its object;
 * every other type Lago sends is known and stored but has no bearing on access.
 */

/** A wallet as Lago serialises it (app/serializers/v1/wallet_serializer.rb), webhook or API. */
export interface WalletReading {
  lagoId: string;
  customerId: string;
  status: string;
  currency: string | null;
  balanceCents: number;
  ongoingBalanceCents: number;
  ongoingUsageBalanceCents: number;
  creditsOngoingBalance: string | null;
  rateAmount: string | null;
  lastBalanceSyncAt: Date | null;
}

/** A subscription as Lago serialises it (app/serializers/v1/subscription_serializer.rb). */
export interface SubscriptionReading {
  lagoId: string;
  externalId: string;
  customerId: string;
  status: string;
  planCode: string | null;
  startedAt: Date | null;
  terminatedAt: Date | null;
  /** current_billing_period_started_at: our usage before it is billed in an earlier invoice. */
  currentPeriodStart: Date | null;
}

/** What one webhook tells us. */
export type LagoFact =
  /** wallet.*: the wallet's state at the time Lago sent it. */
  | { kind: "wallet"; customerId: string; wallet: WalletReading }
  /** wallet_transaction.*: a top-up or a consumption; the object names only the wallet. */
  | { kind: "wallet_transaction"; walletId: string; status: string | null; transactionType: string | null }
  /** subscription.started/terminated/updated/canceled: the subscription's state. */
  | { kind: "subscription"; customerId: string; subscription: SubscriptionReading }
  /** alert.triggered / alert.resolved on a subscription's usage. */
  | {
      kind: "alert";
      customerId: string;
      subscriptionExternalId: string | null;
      alertType: string | null;
      resolved: boolean;
      /** Thresholds crossed (triggered) or still in alarm (resolved); values in cents for amount alerts. */
      thresholds: { code: string | null; value: string | null }[];
      /** The highest crossed value of a threshold, in cents (current_usage_amount alerts). */
      currentValueCents: string | null;
      at: Date | null;
    }
  /** Something changed for the customer that Lago's API must be asked about (usage thresholds, failed top-up payment). */
  | { kind: "refresh"; customerId: string }
  /** A type Lago sends that has no bearing on access (invoices, credit notes, plans...). */
  | { kind: "ignored" }
  /** A type this service does not know: stored, answered 200, ignored. */
  | { kind: "unknown" };

/**
 * Every webhook type Lago sends (app/jobs/send_webhook_job.rb WEBHOOK_SERVICES, plus alert.resolved
 * from app/services/webhooks/usage_monitoring/alert_resolved_service.rb and subscription.canceled
 * from app/services/webhooks/subscriptions/canceled_service.rb).
 */
export const LAGO_WEBHOOK_TYPES: ReadonlySet<string> = new Set([
  "alert.triggered",
  "alert.resolved",
  "dunning_campaign.finished",
  "invoice.created",
  "invoice.one_off_created",
  "invoice.add_on_added",
  "invoice.paid_credit_added",
  "invoice.generated",
  "invoice.drafted",
  "invoice.voided",
  "invoice.payment_dispute_lost",
  "invoice.payment_status_updated",
  "invoice.payment_overdue",
  "invoice.payment_failure",
  "invoice.resynced",
  "event.error",
  "events.errors",
  "fee.created",
  "fee.tax_provider_error",
  "customer.created",
  "customer.updated",
  "customer.accounting_provider_created",
  "customer.accounting_provider_error",
  "customer.crm_provider_created",
  "customer.crm_provider_error",
  "customer.payment_provider_created",
  "customer.payment_provider_error",
  "customer.checkout_url_generated",
  "customer.tax_provider_error",
  "customer.vies_check",
  "credit_note.created",
  "credit_note.generated",
  "credit_note.provider_refund_failure",
  "integration.provider_error",
  "payment.requires_action",
  "payment_provider.error",
  "payment_receipt.created",
  "payment_receipt.generated",
  "payment_request.created",
  "payment_request.payment_failure",
  "payment_request.payment_status_updated",
  "plan.created",
  "plan.deleted",
  "plan.updated",
  "feature.created",
  "feature.updated",
  "feature.deleted",
  "subscription.terminated",
  "subscription.started",
  "subscription.canceled",
  "subscription.termination_alert",
  "subscription.trial_ended",
  "subscription.updated",
  "subscription.usage_threshold_reached",
  "wallet.created",
  "wallet.updated",
  "wallet.terminated",
  "wallet.depleted_ongoing_balance",
  "wallet_transaction.created",
  "wallet_transaction.updated",
  "wallet_transaction.payment_failure",
]);

type Json = Record<string, unknown>;

const obj = (v: unknown): Json | null =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Json) : null;
const str = (v: unknown): string | null => (typeof v === "string" && v !== "" ? v : null);
function int(v: unknown): number {
  const n = typeof v === "string" ? Number(v) : v;
  return typeof n === "number" && Number.isFinite(n) ? Math.trunc(n) : 0;
}
function date(v: unknown): Date | null {
  if (typeof v !== "string" || v === "") return null;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}
const decimal = (v: unknown): string | null =>
  typeof v === "number" && Number.isFinite(v)
    ? String(v)
    : typeof v === "string" && /^-?\d+(\.\d+)?$/.test(v.trim())
      ? v.trim()
      : null;

/** A wallet object from a webhook or GET /api/v1/wallets; null when it lacks an id or a customer. */
export function walletFromLago(raw: unknown): WalletReading | null {
  const w = obj(raw);
  const lagoId = str(w?.lago_id);
  const customerId = str(w?.external_customer_id);
  if (!w || !lagoId || !customerId) return null;
  return {
    lagoId,
    customerId,
    status: str(w.status) ?? "active",
    currency: str(w.currency),
    balanceCents: int(w.balance_cents),
    ongoingBalanceCents: int(w.ongoing_balance_cents),
    ongoingUsageBalanceCents: int(w.ongoing_usage_balance_cents),
    creditsOngoingBalance: decimal(w.credits_ongoing_balance),
    rateAmount: decimal(w.rate_amount),
    lastBalanceSyncAt: date(w.last_balance_sync_at),
  };
}

/** A subscription object from a webhook or GET /api/v1/subscriptions. */
export function subscriptionFromLago(raw: unknown): SubscriptionReading | null {
  const s = obj(raw);
  const lagoId = str(s?.lago_id);
  const externalId = str(s?.external_id);
  const customerId = str(s?.external_customer_id) ?? str(obj(s?.customer)?.external_id);
  if (!s || !lagoId || !externalId || !customerId) return null;
  return {
    lagoId,
    externalId,
    customerId,
    status: str(s.status) ?? "active",
    planCode: str(s.plan_code),
    startedAt: date(s.started_at),
    terminatedAt: date(s.terminated_at),
    currentPeriodStart: date(s.current_billing_period_started_at),
  };
}

/**
 * Ordering of two states of one wallet, since Lago serialises no updated_at: a terminated wallet
 * never becomes active again (app/services/wallets/terminate_service.rb); every balance change
 * (top-up, consumption) sets last_balance_sync_at; between two balance changes Lago's ongoing usage
 * of the wallet only grows. Negative: a is older than b.
 */
export function compareWallets(a: WalletReading, b: WalletReading): number {
  const rank = (w: WalletReading) => (w.status === "terminated" ? 1 : 0);
  if (rank(a) !== rank(b)) return rank(a) - rank(b);
  const ta = a.lastBalanceSyncAt?.getTime() ?? 0;
  const tb = b.lastBalanceSyncAt?.getTime() ?? 0;
  if (ta !== tb) return ta - tb;
  return a.ongoingUsageBalanceCents - b.ongoingUsageBalanceCents;
}

/** pending → active → terminated/canceled, never back (a new subscription gets a new lago_id). */
export function subscriptionRank(status: string): number {
  switch (status) {
    case "pending":
      return 0;
    case "active":
      return 1;
    default:
      return 2; // terminated, canceled
  }
}

/** What one verified webhook body says; never throws on a shape it does not expect. */
export function parseLagoWebhook(body: unknown): {
  type: string;
  objectType: string | null;
  fact: LagoFact;
  customerId: string | null;
} {
  const b = obj(body) ?? {};
  const type = str(b.webhook_type) ?? "";
  const objectType = str(b.object_type);
  const object = objectType ? obj(b[objectType]) : null;
  const fact = factOf(type, object);
  const customerId =
    fact.kind === "wallet" || fact.kind === "subscription" || fact.kind === "alert" || fact.kind === "refresh"
      ? fact.customerId
      : (str(object?.external_customer_id) ?? str(object?.customer_external_id));
  return { type, objectType, fact, customerId };
}

function factOf(type: string, o: Json | null): LagoFact {
  switch (type) {
    // app/services/webhooks/wallets/{created,updated,terminated,depleted_ongoing_balance}_service.rb:
    // object_type "wallet", V1::WalletSerializer.
    case "wallet.created":
    case "wallet.updated":
    case "wallet.terminated":
    case "wallet.depleted_ongoing_balance": {
      const wallet = walletFromLago(o);
      return wallet ? { kind: "wallet", customerId: wallet.customerId, wallet } : { kind: "unknown" };
    }
    // app/services/webhooks/wallet_transactions/{created,updated}_service.rb: object_type
    // "wallet_transaction", V1::WalletTransactionSerializer (lago_wallet_id, status, transaction_type;
    // no customer and no balance: the wallet must be read again).
    case "wallet_transaction.created":
    case "wallet_transaction.updated": {
      const walletId = str(o?.lago_wallet_id);
      return walletId
        ? {
            kind: "wallet_transaction",
            walletId,
            status: str(o?.status),
            transactionType: str(o?.transaction_type),
          }
        : { kind: "unknown" };
    }
    // app/services/webhooks/payment_providers/wallet_transaction_payment_failure_service.rb: a
    // paid top-up whose payment failed (object_type payment_provider_wallet_transaction_payment_error).
    case "wallet_transaction.payment_failure": {
      const customerId = str(o?.external_customer_id);
      return customerId ? { kind: "refresh", customerId } : { kind: "ignored" };
    }
    // app/services/webhooks/subscriptions/{started,terminated,updated,canceled}_service.rb:
    // object_type "subscription", V1::SubscriptionSerializer with the customer and plan.
    case "subscription.started":
    case "subscription.terminated":
    case "subscription.updated":
    case "subscription.canceled": {
      const subscription = subscriptionFromLago(o);
      return subscription
        ? { kind: "subscription", customerId: subscription.customerId, subscription }
        : { kind: "unknown" };
    }
    // app/services/webhooks/subscriptions/usage_thresholds_reached_service.rb: progressive billing
    // issued an invoice; the wallet (which pays it) and the usage changed.
    case "subscription.usage_threshold_reached": {
      const s = subscriptionFromLago(o);
      return s ? { kind: "refresh", customerId: s.customerId } : { kind: "ignored" };
    }
    // app/services/webhooks/usage_monitoring/alert_{triggered,resolved}_service.rb: object_type
    // "triggered_alert", V1::UsageMonitoring::TriggeredAlertSerializer (+ ResolvedAlertSerializer's
    // in_alarm_thresholds, fully_resolved).
    case "alert.triggered":
    case "alert.resolved": {
      const customerId = str(o?.customer_external_id);
      if (!o || !customerId) return { kind: "unknown" };
      const resolved = type === "alert.resolved";
      const list = (resolved ? o.in_alarm_thresholds : o.crossed_thresholds) as unknown;
      const thresholds = Array.isArray(list) ? list.map(obj).filter((t): t is Json => t !== null) : [];
      return {
        kind: "alert",
        customerId,
        subscriptionExternalId: str(o.subscription_external_id),
        alertType: str(o.alert_type),
        resolved,
        thresholds: thresholds.map((t) => ({ code: str(t.code), value: decimal(t.value) })),
        currentValueCents: decimal(o.current_value),
        at: date(resolved ? o.resolved_at : o.triggered_at) ?? date(o.triggered_at),
      };
    }
    default:
      return LAGO_WEBHOOK_TYPES.has(type) ? { kind: "ignored" } : { kind: "unknown" };
  }
}
