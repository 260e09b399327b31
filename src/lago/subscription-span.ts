/**
 * Which Lago subscription bills a call made at a given time, decided the way Lago decides it.
 *
 * Lago matches an event to a subscription only when `started_at <= timestamp` and the subscription
 * was not terminated before it (app/models/event.rb#subscription, app/services/events/
 * post_process_service.rb), and answers 200 either way: an event outside every span is stored and
 * never billed. So before an event's first send the service places it here, and parks what would
 * vanish with a reason an operator can act on. Pure: no I/O, no clock.
 */

export type SubscriptionStatus = "active" | "pending" | "terminated" | "canceled";

/** One Lago subscription as far as billing spans go (times in Unix milliseconds). */
export interface SubscriptionSpan {
  externalId: string;
  status: SubscriptionStatus;
  planCode: string | null;
  /** When Lago started billing it; null while pending. */
  startedAt: number | null;
  /** The requested start: for a pending subscription, when it will start. */
  subscriptionAt: number | null;
  terminatedAt: number | null;
}

/**
 * What Lago said about one mapping key: a subscription external id (same/template mapping), or a
 * customer (lookup mapping). `complete` is false when only the active subscription was asked for:
 * pending and terminated ones are fetched only when a decision needs them.
 */
export interface SubscriptionView {
  key: { kind: "subscription" | "customer"; id: string };
  active: SubscriptionSpan[];
  pending: SubscriptionSpan[];
  /** Most recently terminated first. */
  terminated: SubscriptionSpan[];
  complete: boolean;
}

export type Placement =
  /** Send it to this subscription: Lago will bill it. */
  | { kind: "send"; subscriptionId: string }
  /** Lago would store it and never bill it: park as unbillable with this reason. */
  | { kind: "park"; reason: string }
  /** Not decidable yet (a pending subscription whose start has passed but Lago has not activated). */
  | { kind: "hold"; reason: string }
  /** Ask Lago for the pending and terminated subscriptions too, then place again. */
  | { kind: "incomplete" };

const iso = (ms: number) => new Date(ms).toISOString();

/** Lago compares at millisecond precision (date_trunc('millisecond', started_at) <= timestamp). */
const truncMs = (ms: number) => Math.floor(ms);

/** True when a call at `t` (ms) falls inside the span Lago bills for this subscription. */
export function covers(s: SubscriptionSpan, t: number): boolean {
  if (s.startedAt === null || truncMs(s.startedAt) > t) return false;
  return s.terminatedAt === null || truncMs(s.terminatedAt) >= t;
}

const REPROCESS = "then `webhook-service reprocess --state unbillable`";

/** Where a call made at `timestampSeconds` goes, given what Lago said about its mapping key. */
export function placeEvent(view: SubscriptionView, timestampSeconds: number): Placement {
  const t = Math.round(timestampSeconds * 1000);
  const { key } = view;
  if (view.active.length > 1) {
    return {
      kind: "park",
      reason:
        `customer "${key.id}" has ${view.active.length} active subscriptions in Lago ` +
        `(${view.active.map((s) => s.externalId).join(", ")}): the service cannot choose; use ` +
        `LAGO_SUBSCRIPTION_MAPPING=template, or terminate the extra ones, ${REPROCESS}`,
    };
  }
  const active = view.active[0];
  if (active && covers(active, t)) return { kind: "send", subscriptionId: active.externalId };
  if (!view.complete) return { kind: "incomplete" };
  // A call before the active subscription started may still fall in an earlier, terminated one.
  const earlier = view.terminated.find((s) => covers(s, t));
  if (earlier) return { kind: "send", subscriptionId: earlier.externalId };
  // Only the reasons below print the call's time (formatting it for every event sent was 5 % of the
  // worker's CPU under a backlog).
  const at = iso(t);
  if (active) {
    return {
      kind: "park",
      reason:
        `call at ${at} precedes subscription "${active.externalId}" start at ${iso(active.startedAt ?? t)}: ` +
        "Lago would store it and never bill it. Lago cannot move an active subscription's start: if it " +
        "has not been invoiced yet, terminate it and create it again with subscription_at at or before " +
        `${at} (\`webhook-service lago customer add <customer> --plan <plan> --subscription-at ${at}\`), ` +
        `${REPROCESS}; otherwise bill this usage another way`,
    };
  }
  const pending = view.pending[0];
  if (pending) {
    const start = pending.subscriptionAt;
    if (start !== null && t < start) {
      return {
        kind: "park",
        reason:
          `call at ${at} precedes subscription "${pending.externalId}", which is pending and starts at ` +
          `${iso(start)}: move its start back (PUT /api/v1/subscriptions/${pending.externalId} with ` +
          `subscription_at at or before ${at}; Lago allows it while the subscription is pending), ${REPROCESS}`,
      };
    }
    return {
      kind: "hold",
      reason:
        `subscription "${pending.externalId}" is pending (starts at ${start === null ? "an unknown time" : iso(start)}) ` +
        "and Lago has not activated it yet: held until Lago reports it active",
    };
  }
  const last = view.terminated[0];
  if (last) {
    if (last.startedAt !== null && t < last.startedAt) {
      return {
        kind: "park",
        reason:
          `call at ${at} precedes subscription "${last.externalId}" start at ${iso(last.startedAt)} ` +
          `(it was terminated at ${iso(last.terminatedAt ?? t)}) and no other subscription covers it: ` +
          `create one that does (\`webhook-service lago customer add <customer> --plan <plan> --subscription-at ${at}\`), ` +
          REPROCESS,
      };
    }
    return {
      kind: "park",
      reason:
        `call at ${at} is after subscription "${last.externalId}" was terminated at ` +
        `${iso(last.terminatedAt ?? t)}: Lago would store it and never bill it; create a new subscription ` +
        `for the customer (\`webhook-service lago customer add <customer> --plan <plan>\`), ${REPROCESS}`,
    };
  }
  return {
    kind: "park",
    reason:
      key.kind === "customer"
        ? `customer "${key.id}" has no subscription in Lago (none active, pending or terminated): ` +
          `create one (\`webhook-service lago customer add ${key.id} --plan <plan>\`), ${REPROCESS}`
        : `Lago has no subscription "${key.id}" (none active, pending or terminated): create it ` +
          `(\`webhook-service lago customer add <customer> --plan <plan>\`), ${REPROCESS}`,
  };
}

/** Lago's subscription JSON (V1::SubscriptionSerializer) as a span; null when it is not one. */
export function spanFromLago(raw: unknown): SubscriptionSpan | null {
  if (typeof raw !== "object" || raw === null) return null;
  const s = raw as Record<string, unknown>;
  if (typeof s.external_id !== "string") return null;
  const time = (v: unknown) => {
    if (typeof v !== "string" || v === "") return null;
    const ms = Date.parse(v);
    return Number.isFinite(ms) ? ms : null;
  };
  const status = s.status;
  return {
    externalId: s.external_id,
    status:
      status === "pending" || status === "terminated" || status === "canceled" || status === "active"
        ? status
        : "active",
    planCode: typeof s.plan_code === "string" ? s.plan_code : null,
    startedAt: time(s.started_at),
    subscriptionAt: time(s.subscription_at),
    terminatedAt: time(s.terminated_at),
  };
}

/** One line saying what state a subscription is in, for validate and setup. */
export function describeSpan(s: SubscriptionSpan): string {
  switch (s.status) {
    case "active":
      return `active since ${s.startedAt === null ? "?" : iso(s.startedAt)}`;
    case "pending":
      return `pending, starts at ${s.subscriptionAt === null ? "?" : iso(s.subscriptionAt)}`;
    case "terminated":
      return `terminated at ${s.terminatedAt === null ? "?" : iso(s.terminatedAt)}`;
    case "canceled":
      return "canceled before it started";
  }
}
