import { query } from "../db/queries.ts";
import { fromUnits, toUnits } from "../decimal.ts";
import { resolveCustomer } from "../ingest/litellm-payload.ts";
import { TRANSACTION_ID_SUFFIXES } from "../lago/mapping.ts";
import type { Service } from "../service.ts";
import { fromSpendLog, type SpendLogRow, SpendLogsReader, spendLogToPayload } from "./spendlogs.ts";

export type DriftKind =
  | "missing_in_ledger"
  | "extra_in_ledger"
  | "rejected"
  | "tokens_mismatch"
  | "cost_mismatch"
  | "priced_by_service"
  | "not_billable"
  | "not_queued"
  | "not_delivered";

/** Calls, tokens and USD cost of one source for one customer and day. Sums are exact decimal strings. */
export interface Totals {
  calls: number;
  input_tokens: string;
  output_tokens: string;
  total_tokens: string;
  cost: string;
}

export interface DeliveredTotals {
  /** Distinct calls with at least one event delivered. */
  calls: number;
  /** Sum of properties.tokens of delivered token-metric events. */
  tokens: string;
  /** Sum of precise_total_amount_cents of delivered cost-metric events, in USD (markup included). */
  cost: string;
}

export interface DriftDay {
  customer: string | null;
  day: string;
  spendlogs: Totals | null;
  ledger: Totals | null;
  delivered: DeliveredTotals | null;
}

/** One difference. `spendlogs`/`ledger`/`delivered` hold the quantity the kind is about. */
export interface Difference {
  customer: string | null;
  day: string;
  kind: DriftKind;
  /** Calls concerned. */
  calls: number;
  spendlogs: string | null;
  ledger: string | null;
  delivered: string | null;
  unexplained: boolean;
  explanation: string;
  /** Outbox states of not-delivered calls. */
  states?: Record<string, number>;
  /** Some of the request ids concerned, to look them up. */
  request_ids?: string[];
}

export interface DriftReport {
  since: string;
  until: string;
  generated_at: string;
  billing_mode: string;
  spendlogs: { available: boolean; message?: string };
  days: DriftDay[];
  differences: Difference[];
  unexplained: boolean;
  unexplained_count: number;
}

export interface DriftOptions {
  since: Date;
  until: Date;
  now?: Date | undefined;
  pageSize?: number | undefined;
}

const SAMPLE_IDS = 10;
const MIN_LAG_MS = 60_000;

interface Bucket {
  customer: string | null;
  day: string;
  calls: number;
  input: bigint;
  output: bigint;
  total: bigint;
  cost: bigint;
  missingRecent: string[];
  missingRecentCount: number;
  missingLate: string[];
  missingLateCount: number;
  rejected: number;
  rejectedUnrecorded: number;
  reasons: Map<string, number>;
  rejectedIds: string[];
  tokensMismatch: { calls: number; s: bigint; l: bigint; ids: string[] };
  costMismatch: { calls: number; s: bigint; l: bigint; ids: string[] };
  priced: { calls: number; s: bigint; l: bigint };
}

interface MatchCount {
  inWindow: number;
  api: number;
  recent: number;
}

interface LedgerRow {
  kind: "ledger" | "call" | "rejection";
  key: string;
  customer_id: string | null;
  day: string | null;
  in_window: boolean | null;
  recent: boolean | null;
  source: string | null;
  tokens_input: string | null;
  tokens_output: string | null;
  total_tokens: string | null;
  cost: string | null;
  cost_source: string | null;
}

interface LedgerDay {
  customer: string;
  day: string;
  calls: number;
  input_tokens: string;
  output_tokens: string;
  total_tokens: string;
  cost: string;
  api_calls: number;
  recent_calls: number;
  not_billable: number;
  not_queued: number;
  failed: number;
  unbillable: number;
  pending_recent: number;
  pending_late: number;
  delivered_calls: number;
  delivered_tokens: string;
  delivered_cost: string;
}

const keyOf = (customer: string | null, day: string) => `${customer ?? ""}\n${day}`;
const utcDay = (epochSeconds: number) => new Date(epochSeconds * 1000).toISOString().slice(0, 10);
/** USD as the ledger stores it: numeric(24,12), rounded half up. */
const cost12 = (v: string | number) => toUnits(fromUnits(toUnits(v), 12));
const sample = (ids: string[], id: string) => {
  if (ids.length < SAMPLE_IDS) ids.push(id);
};

/**
 * Compares, per customer and UTC day, what LiteLLM recorded (SpendLogs, attributed and mapped by
 * the same rules as the callback), what the ledger holds and what reached Lago, and lists every
 * difference. Calls are matched one by one on the request id, so a difference names its calls;
 * sums are exact decimals. A difference is explained when the pipeline is known to be still
 * working on it (inside the safety lag), or when it is by design and visible elsewhere (not
 * billable calls, parked events, usage API calls that never went through LiteLLM, calls priced
 * from config.yaml because LiteLLM said $0); anything else is unexplained.
 */
export async function drift(service: Service, opts: DriftOptions): Promise<DriftReport> {
  if (!(opts.since < opts.until)) throw new Error("since must be before until");
  const now = opts.now ?? new Date();
  const { settings } = service;
  const lagMs = Math.max(settings.reconcile.safetyLagSeconds * 1000, MIN_LAG_MS);
  const recentCutoff = new Date(now.getTime() - lagMs);
  // SpendLogs rows newer than this may simply not be reconciled yet.
  const reconcileCutoff = new Date(now.getTime() - lagMs - settings.reconcile.intervalSeconds * 1000);

  const buckets = new Map<string, Bucket>();
  const matched = new Map<string, MatchCount>();
  const bucket = (customer: string | null, day: string): Bucket => {
    const k = keyOf(customer, day);
    let b = buckets.get(k);
    if (!b) {
      b = {
        customer,
        day,
        calls: 0,
        input: 0n,
        output: 0n,
        total: 0n,
        cost: 0n,
        missingRecent: [],
        missingRecentCount: 0,
        missingLate: [],
        missingLateCount: 0,
        rejected: 0,
        rejectedUnrecorded: 0,
        reasons: new Map(),
        rejectedIds: [],
        tokensMismatch: { calls: 0, s: 0n, l: 0n, ids: [] },
        costMismatch: { calls: 0, s: 0n, l: 0n, ids: [] },
        priced: { calls: 0, s: 0n, l: 0n },
      };
      buckets.set(k, b);
    }
    return b;
  };

  const reader = new SpendLogsReader(service);
  let spendlogs: DriftReport["spendlogs"];
  try {
    const availability = await reader.probe();
    spendlogs = availability.available
      ? { available: true }
      : { available: false, message: availability.message };
    if (availability.available) {
      for await (const rows of reader.pages(opts.since, opts.until, { pageSize: opts.pageSize })) {
        await comparePage(service, rows, opts, { recentCutoff, reconcileCutoff }, bucket, matched);
      }
    }
  } finally {
    await reader.close();
  }

  const ledgerDays = await service.sql.unsafe<LedgerDay[]>(query("drift_ledger"), [
    opts.since.toISOString(),
    opts.until.toISOString(),
    recentCutoff.toISOString(),
    recentCutoff.toISOString(),
    settings.lago.metricCode,
    settings.lago.costMetricCode,
    TRANSACTION_ID_SUFFIXES,
  ] as never);
  const ledgerByKey = new Map(ledgerDays.map((d) => [keyOf(d.customer, d.day), d]));
  const keys = new Set([...buckets.keys(), ...ledgerByKey.keys()]);
  const days: DriftDay[] = [];
  const differences: Difference[] = [];
  for (const k of [...keys].sort()) {
    const b = buckets.get(k);
    const l = ledgerByKey.get(k);
    const customer = b?.customer ?? l?.customer ?? null;
    const day = (b?.day ?? l?.day) as string;
    days.push({
      customer,
      day,
      spendlogs: b
        ? {
            calls: b.calls,
            input_tokens: String(b.input),
            output_tokens: String(b.output),
            total_tokens: String(b.total),
            cost: fromUnits(b.cost),
          }
        : null,
      ledger: l
        ? {
            calls: l.calls,
            input_tokens: l.input_tokens,
            output_tokens: l.output_tokens,
            total_tokens: l.total_tokens,
            cost: trimDecimal(l.cost),
          }
        : null,
      delivered: l
        ? { calls: l.delivered_calls, tokens: l.delivered_tokens, cost: trimDecimal(l.delivered_cost) }
        : null,
    });
    const diff = (d: Omit<Difference, "customer" | "day">) => differences.push({ customer, day, ...d });
    if (b) spendlogsDifferences(b, l, diff);
    if (l && spendlogs.available) extraDifferences(l, matched.get(k), diff);
    if (l) deliveryDifferences(l, diff);
  }
  const unexplainedCount = differences.filter((d) => d.unexplained).length;
  return {
    since: opts.since.toISOString(),
    until: opts.until.toISOString(),
    generated_at: now.toISOString(),
    billing_mode: settings.lago.billingMode,
    spendlogs,
    days,
    differences,
    unexplained: unexplainedCount > 0,
    unexplained_count: unexplainedCount,
  };
}

/** Maps a page of SpendLogs rows and compares each with its ledger row. */
async function comparePage(
  service: Service,
  rows: SpendLogRow[],
  opts: DriftOptions,
  cut: { recentCutoff: Date; reconcileCutoff: Date },
  bucket: (customer: string | null, day: string) => Bucket,
  matched: Map<string, MatchCount>,
): Promise<void> {
  const ctx = {
    settings: service.settings.ingest,
    prices: service.prices,
    source: "reconciler" as const,
    ignoreMaxAge: true,
  };
  const mapped = rows.map((row) => ({ row, result: fromSpendLog(row, ctx) }));
  const ok = mapped.flatMap(({ row, result }) => (result.ok ? [{ row, record: result.record }] : []));
  const callIds = ok
    .filter(
      ({ record }) =>
        record.metadata.cache_hit === true && typeof record.metadata.litellm_call_id === "string",
    )
    .map(({ record }) => record.metadata.litellm_call_id as string);
  const rejectedIds = mapped.filter(({ result }) => !result.ok).map(({ row }) => row.request_id);
  const found = await service.sql.unsafe<LedgerRow[]>(query("drift_ledger_rows"), [
    ok.map(({ record }) => record.requestId),
    callIds,
    rejectedIds,
    opts.since.toISOString(),
    opts.until.toISOString(),
    cut.recentCutoff.toISOString(),
  ]);
  const byId = new Map<string, LedgerRow>();
  const byCall = new Map<string, LedgerRow>();
  const recorded = new Set<string>();
  for (const f of found) {
    if (f.kind === "ledger") byId.set(f.key, f);
    else if (f.kind === "call") byCall.set(f.key, f);
    else recorded.add(f.key);
  }
  for (const { row, result } of mapped) {
    if (result.ok) continue;
    const customer = resolveCustomer(spendLogToPayload(row), service.settings.ingest.attribution);
    const b = bucket(customer, utcDay(row.start_epoch));
    b.rejected++;
    b.reasons.set(result.reason, (b.reasons.get(result.reason) ?? 0) + 1);
    sample(b.rejectedIds, row.request_id);
    if (!recorded.has(row.request_id) && row.start_epoch * 1000 < cut.reconcileCutoff.getTime())
      b.rejectedUnrecorded++;
  }
  for (const { row, record } of ok) {
    const b = bucket(record.customerId, utcDay(record.timestamp));
    const sCost = cost12(row.spend ?? 0);
    b.calls++;
    b.input += BigInt(record.tokensInput);
    b.output += BigInt(record.tokensOutput);
    b.total += BigInt(record.totalTokens);
    b.cost += sCost;
    const callId = record.metadata.cache_hit === true ? record.metadata.litellm_call_id : undefined;
    const l = byId.get(record.requestId) ?? (typeof callId === "string" ? byCall.get(callId) : undefined);
    if (!l) {
      if (record.timestamp * 1000 >= cut.reconcileCutoff.getTime()) {
        b.missingRecentCount++;
        sample(b.missingRecent, record.requestId);
      } else {
        b.missingLateCount++;
        sample(b.missingLate, record.requestId);
      }
      continue;
    }
    if (l.in_window) {
      const k = keyOf(l.customer_id, l.day as string);
      const m = matched.get(k) ?? { inWindow: 0, api: 0, recent: 0 };
      m.inWindow++;
      if (l.source === "api") m.api++;
      else if (l.recent) m.recent++;
      matched.set(k, m);
    }
    const lTotal = BigInt(l.total_tokens ?? 0);
    if (
      BigInt(l.tokens_input ?? 0) !== BigInt(record.tokensInput) ||
      BigInt(l.tokens_output ?? 0) !== BigInt(record.tokensOutput) ||
      lTotal !== BigInt(record.totalTokens)
    ) {
      b.tokensMismatch.calls++;
      b.tokensMismatch.s += BigInt(record.totalTokens);
      b.tokensMismatch.l += lTotal;
      sample(b.tokensMismatch.ids, record.requestId);
    }
    const lCost = toUnits(l.cost ?? "0");
    if (lCost !== sCost) {
      if (l.cost_source === "priced" && sCost === 0n) {
        b.priced.calls++;
        b.priced.l += lCost;
      } else {
        b.costMismatch.calls++;
        b.costMismatch.s += sCost;
        b.costMismatch.l += lCost;
        sample(b.costMismatch.ids, record.requestId);
      }
    }
  }
}

type Emit = (d: Omit<Difference, "customer" | "day">) => void;

function spendlogsDifferences(b: Bucket, l: LedgerDay | undefined, emit: Emit): void {
  const ledgerCalls = l ? String(l.calls) : "0";
  if (b.missingLateCount > 0) {
    emit({
      kind: "missing_in_ledger",
      calls: b.missingLateCount,
      spendlogs: String(b.calls),
      ledger: ledgerCalls,
      delivered: null,
      unexplained: true,
      explanation:
        "calls in SpendLogs the ledger lacks, older than the reconciler's reach: run " +
        "`webhook-service reconcile --since ... --until ...` (or backfill) and check the reconciler runs",
      request_ids: b.missingLate,
    });
  }
  if (b.missingRecentCount > 0) {
    emit({
      kind: "missing_in_ledger",
      calls: b.missingRecentCount,
      spendlogs: String(b.calls),
      ledger: ledgerCalls,
      delivered: null,
      unexplained: false,
      explanation: "recent calls not reconciled yet (inside the safety lag plus one reconcile interval)",
      request_ids: b.missingRecent,
    });
  }
  if (b.rejected > 0) {
    const reasons = [...b.reasons].map(([r, n]) => `${n}× ${r}`).join("; ");
    emit({
      kind: "rejected",
      calls: b.rejected,
      spendlogs: String(b.rejected),
      ledger: "0",
      delivered: null,
      unexplained: b.rejectedUnrecorded > 0,
      explanation:
        b.rejectedUnrecorded > 0
          ? `SpendLogs rows that cannot be billed and are not in ingest_rejections yet (run reconcile): ${reasons}`
          : `SpendLogs rows that cannot be billed, kept in ingest_rejections: ${reasons}`,
      request_ids: b.rejectedIds,
    });
  }
  if (b.tokensMismatch.calls > 0) {
    emit({
      kind: "tokens_mismatch",
      calls: b.tokensMismatch.calls,
      spendlogs: String(b.tokensMismatch.s),
      ledger: String(b.tokensMismatch.l),
      delivered: null,
      unexplained: true,
      explanation:
        "the callback and SpendLogs report different tokens for the same calls (total tokens shown); " +
        "the ledger kept the first version, see usage_conflicts",
      request_ids: b.tokensMismatch.ids,
    });
  }
  if (b.costMismatch.calls > 0) {
    emit({
      kind: "cost_mismatch",
      calls: b.costMismatch.calls,
      spendlogs: fromUnits(b.costMismatch.s),
      ledger: fromUnits(b.costMismatch.l),
      delivered: null,
      unexplained: true,
      explanation:
        "the callback and SpendLogs report a different cost for the same calls; the ledger kept the " +
        "first version, see usage_conflicts",
      request_ids: b.costMismatch.ids,
    });
  }
  if (b.priced.calls > 0) {
    emit({
      kind: "priced_by_service",
      calls: b.priced.calls,
      spendlogs: "0",
      ledger: fromUnits(b.priced.l),
      delivered: null,
      unexplained: false,
      explanation: "LiteLLM logged $0 for calls that used tokens; the service priced them from config.yaml",
    });
  }
}

function extraDifferences(l: LedgerDay, m: MatchCount | undefined, emit: Emit): void {
  const extra = l.calls - (m?.inWindow ?? 0);
  if (extra <= 0) return;
  const api = Math.max(0, l.api_calls - (m?.api ?? 0));
  const recent = Math.min(extra - api, Math.max(0, l.recent_calls - (m?.recent ?? 0)));
  const late = extra - api - recent;
  const base = {
    kind: "extra_in_ledger" as const,
    spendlogs: String(l.calls - extra),
    ledger: String(l.calls),
  };
  if (api > 0) {
    emit({
      ...base,
      calls: api,
      delivered: null,
      unexplained: false,
      explanation: "calls sent to the usage API (POST /webhooks/usage), which never pass through LiteLLM",
    });
  }
  if (recent > 0) {
    emit({
      ...base,
      calls: recent,
      delivered: null,
      unexplained: false,
      explanation: "recent calls LiteLLM has not written to SpendLogs yet (it writes in batches)",
    });
  }
  if (late > 0) {
    emit({
      ...base,
      calls: late,
      delivered: null,
      unexplained: true,
      explanation:
        "calls in the ledger without a SpendLogs row: LiteLLM's spend-log queue may have dropped them, " +
        "or they came from another LiteLLM database",
    });
  }
}

function deliveryDifferences(l: LedgerDay, emit: Emit): void {
  const billable = l.calls - l.not_billable;
  if (l.not_billable > 0) {
    emit({
      kind: "not_billable",
      calls: l.not_billable,
      spendlogs: null,
      ledger: String(l.calls),
      delivered: String(l.delivered_calls),
      unexplained: false,
      explanation: "calls stored as not billable (cache hits, no tokens): no Lago events by design",
    });
  }
  if (l.not_queued > 0) {
    emit({
      kind: "not_queued",
      calls: l.not_queued,
      spendlogs: null,
      ledger: String(billable),
      delivered: String(l.delivered_calls),
      unexplained: true,
      explanation: "billable calls without any outgoing Lago event in the outbox",
    });
  }
  const parked = l.failed + l.unbillable;
  if (parked + l.pending_recent > 0) {
    emit({
      kind: "not_delivered",
      calls: parked + l.pending_recent,
      spendlogs: null,
      ledger: String(billable),
      delivered: String(l.delivered_calls),
      unexplained: false,
      explanation:
        "events pending inside the safety lag, or parked (failed / unbillable: see last_error, fix, " +
        "then POST /webhooks/reprocess)",
      states: { pending: l.pending_recent, failed: l.failed, unbillable: l.unbillable },
    });
  }
  if (l.pending_late > 0) {
    emit({
      kind: "not_delivered",
      calls: l.pending_late,
      spendlogs: null,
      ledger: String(billable),
      delivered: String(l.delivered_calls),
      unexplained: true,
      explanation:
        "events still pending past the safety lag: is the delivery worker running and Lago reachable?",
      states: { pending: l.pending_late },
    });
  }
}

/** "12.500000000000" → "12.5": numeric text without trailing zeros, as the other sums. */
function trimDecimal(v: string): string {
  return fromUnits(toUnits(v));
}
