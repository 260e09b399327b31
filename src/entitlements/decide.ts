import { fromUnits, toUnits, UNIT } from "../decimal.ts";

/** Why a customer is blocked; stable codes (metrics labels, the proxy's rejections, the API). */
export type BlockReason =
  | "wallet_exhausted"
  | "subscription_terminated"
  | "subscription_missing"
  | "spending_limit"
  | "manual";

export const BLOCK_REASONS: readonly BlockReason[] = [
  "wallet_exhausted",
  "subscription_terminated",
  "subscription_missing",
  "spending_limit",
  "manual",
];

export type SubscriptionStatus = "active" | "pending" | "terminated" | "missing";

export interface DecisionInputs {
  override: { state: "allowed" | "blocked"; reason: string } | null;
  /** null: Lago has not been asked yet (nothing is blocked on what we do not know). */
  subscription: { status: SubscriptionStatus | null; endedAt: Date | null };
  /** The customer's active prepaid wallets, summed; null when it has none. */
  wallet: {
    currency: string | null;
    /** Σ ongoing_balance_cents of the active wallets (Lago's balance minus the usage it counted). */
    ongoingBalanceCents: number;
    /** Our ledger's usage Lago has not counted yet, priced as billed, in USD cents (decimal). */
    unaccountedCents: string;
  } | null;
  /** A hard spending limit for the billing period; null when none. */
  limit: {
    limitCents: string;
    /** Lago's current usage of the period (amount_cents). */
    usageCents: string;
    unaccountedCents: string;
    periodEnd: Date | null;
  } | null;
  minBalanceCents: number;
}

export interface Decision {
  state: "allowed" | "blocked";
  reason: BlockReason | null;
  /** What the customer reads in the 402 (null when allowed). */
  message: string | null;
  /** The same decision without the manual override. */
  computed: { state: "allowed" | "blocked"; reason: BlockReason | null };
  /** Remaining prepaid credit after our ledger (cents, decimal), when the customer has a wallet. */
  availableCents: string | null;
  /**
   * For an allowed customer with a wallet or a limit: how many more cents may be spent before a
   * block, and what that block would say (the proxy spends its own finished calls against it).
   */
  headroom: { cents: string; reason: BlockReason; message: string } | null;
}

const units = (cents: string | number) => toUnits(typeof cents === "number" ? String(cents) : cents);

/** Cents as "12.34 USD" (truncated toward zero, never rounded up in the customer's favour or not). */
export function money(units18: bigint, currency: string | null): string {
  const cents = units18 / UNIT; // whole cents, truncated
  const neg = cents < 0n;
  const abs = neg ? -cents : cents;
  const text = `${neg ? "-" : ""}${abs / 100n}.${(abs % 100n).toString().padStart(2, "0")}`;
  return `${text} ${currency ?? "USD"}`;
}

const day = (d: Date | null) => (d ? d.toISOString().slice(0, 10) : null);

export function walletMessage(availableUnits: bigint, currency: string | null): string {
  return (
    `Your prepaid credit is used up (remaining: ${money(availableUnits, currency)}). ` +
    "Top up your wallet to continue; access resumes within seconds of the top-up."
  );
}

function limitMessage(limitUnits: bigint, periodEnd: Date | null): string {
  const reset = day(periodEnd);
  return (
    `You have reached your spending limit of ${money(limitUnits, "USD")} for this billing period. ` +
    (reset ? `It resets on ${reset}; ` : "") +
    "ask for a higher limit to continue now."
  );
}

function subscriptionMessage(status: SubscriptionStatus, endedAt: Date | null): string {
  if (status === "terminated") {
    const d = day(endedAt);
    return `Your subscription ended${d ? ` on ${d}` : ""}. Renew your subscription to continue.`;
  }
  if (status === "pending")
    return "Your subscription has not started yet. Calls are accepted once it starts.";
  return "This account has no active subscription. Subscribe to a plan to continue.";
}

export function manualMessage(reason: string): string {
  return `Access to this account is suspended: ${reason}. Contact support to restore it.`;
}

/**
 * The decision for one customer. Order: a manual override; then the subscription (no active one:
 * blocked, whatever the credit); then the prepaid wallet (blocked once what remains after our
 * ledger is at or below the minimum balance); then the spending limit (blocked once Lago's usage
 * plus ours reaches it). Pure: the engine persists and publishes what it returns.
 */
export function decide(inputs: DecisionInputs): Decision {
  let computed: { state: "allowed" | "blocked"; reason: BlockReason | null; message: string | null } = {
    state: "allowed",
    reason: null,
    message: null,
  };
  let availableCents: string | null = null;
  let headroom: Decision["headroom"] = null;
  const sub = inputs.subscription.status;
  const block = (reason: BlockReason, message: string) => {
    if (computed.state === "allowed") computed = { state: "blocked", reason, message };
  };
  if (sub !== null && sub !== "active") {
    block(
      sub === "terminated" ? "subscription_terminated" : "subscription_missing",
      subscriptionMessage(sub, inputs.subscription.endedAt),
    );
  }
  const candidates: { cents: bigint; reason: BlockReason; message: string }[] = [];
  if (inputs.wallet) {
    const available = units(inputs.wallet.ongoingBalanceCents) - units(inputs.wallet.unaccountedCents);
    availableCents = fromUnits(available);
    const room = available - units(inputs.minBalanceCents);
    const message = walletMessage(available, inputs.wallet.currency);
    if (room <= 0n) block("wallet_exhausted", message);
    else candidates.push({ cents: room, reason: "wallet_exhausted", message });
  }
  if (inputs.limit) {
    const limit = units(inputs.limit.limitCents);
    const used = units(inputs.limit.usageCents) + units(inputs.limit.unaccountedCents);
    const room = limit - used;
    const message = limitMessage(limit, inputs.limit.periodEnd);
    if (room <= 0n) block("spending_limit", message);
    else candidates.push({ cents: room, reason: "spending_limit", message });
  }
  if (computed.state === "allowed" && candidates.length > 0) {
    const tightest = candidates.reduce((a, b) => (b.cents < a.cents ? b : a));
    headroom = { cents: fromUnits(tightest.cents), reason: tightest.reason, message: tightest.message };
  }
  const o = inputs.override;
  if (o?.state === "blocked") {
    return {
      state: "blocked",
      reason: "manual",
      message: manualMessage(o.reason),
      computed: { state: computed.state, reason: computed.reason },
      availableCents,
      headroom: null,
    };
  }
  if (o?.state === "allowed") {
    return {
      state: "allowed",
      reason: null,
      message: null,
      computed: { state: computed.state, reason: computed.reason },
      availableCents,
      headroom: null,
    };
  }
  return {
    state: computed.state,
    reason: computed.reason,
    message: computed.message,
    computed: { state: computed.state, reason: computed.reason },
    availableCents,
    headroom,
  };
}

/**
 * Our price of a call against prepaid credit, in cents: cost × (100 + markup) — what cost mode puts
 * in precise_total_amount_cents (src/lago/mapping.ts), and what tokens mode's plan charges when
 * `lago setup --plan --markup` priced it from config.yaml (set ENTITLEMENT_PRICE_MARKUP_PERCENT to
 * that markup). Exact; the SQL in sql/queries/entitlement_unaccounted.sql computes the same.
 */
export function billedCents(costUsd: string, markupPercent: number): string {
  return fromUnits((toUnits(costUsd) * (100n * UNIT + toUnits(markupPercent))) / UNIT);
}
