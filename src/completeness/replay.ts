import { query } from "../db/queries.ts";
import { fingerprint, type UsageRecord } from "../ingest/record.ts";
import type { Rejection } from "../ingest/store.ts";
import { toLagoEvents } from "../lago/mapping.ts";
import type { Service } from "../service.ts";
import { fromSpendLog, type SpendLogRow, spendLogToPayload } from "./spendlogs.ts";

export interface ReplayOptions {
  source: "reconciler" | "backfill";
  /** Backfill replays history: the live ingest age window does not apply. */
  ignoreMaxAge: boolean;
  /** Only this customer's calls (rows of other customers and rows without one are skipped). */
  customer?: string | undefined;
  /** Classify only; write nothing. */
  dryRun?: boolean | undefined;
}

export interface CustomerTally {
  new: number;
  already_in_ledger: number;
  conflicts: number;
  /** Earliest call time seen (Unix seconds), for the "predates the subscription" warning. */
  first_timestamp: number;
  last_timestamp: number;
}

const MAX_REASONS = 50;

/** Running totals of a replay (reconcile run or backfill), page after page. */
export class Tally {
  scanned = 0;
  inserted = 0;
  duplicates = 0;
  conflicts = 0;
  rejected = 0;
  /** Rejections stored now (the others were stored by an earlier read of the same rows). */
  rejectionsStored = 0;
  skippedOtherCustomers = 0;
  eventsQueued = 0;
  readonly reasons = new Map<string, number>();
  readonly customers = new Map<string, CustomerTally>();

  reason(text: string): void {
    const key = this.reasons.has(text) || this.reasons.size < MAX_REASONS ? text : "other reasons";
    this.reasons.set(key, (this.reasons.get(key) ?? 0) + 1);
  }

  customer(r: UsageRecord): CustomerTally {
    let c = this.customers.get(r.customerId);
    if (!c) {
      c = {
        new: 0,
        already_in_ledger: 0,
        conflicts: 0,
        first_timestamp: r.timestamp,
        last_timestamp: r.timestamp,
      };
      this.customers.set(r.customerId, c);
    }
    if (r.timestamp < c.first_timestamp) c.first_timestamp = r.timestamp;
    if (r.timestamp > c.last_timestamp) c.last_timestamp = r.timestamp;
    return c;
  }
}

interface Known {
  kind: "ledger" | "call" | "conflict" | "rejection";
  key: string;
  fingerprint: string | null;
  customer_id: string | null;
}

/**
 * Brings one page of SpendLogs rows into the ledger. Rows the ledger already holds are settled here
 * (duplicate, or a conflict already kept) and never written again, so re-reading a window leaves
 * every table unchanged; only new calls, new conflicts and new rejections go to Ledger.write, which
 * also queues their Lago events in the same transaction.
 */
export async function replayPage(
  service: Pick<Service, "settings" | "sql" | "ledger" | "prices">,
  rows: SpendLogRow[],
  opts: ReplayOptions,
  tally: Tally,
): Promise<void> {
  const ctx = {
    settings: service.settings.ingest,
    prices: service.prices,
    source: opts.source,
    ignoreMaxAge: opts.ignoreMaxAge,
  };
  const records: UsageRecord[] = [];
  const rejected: { requestId: string; reason: string; row: SpendLogRow }[] = [];
  tally.scanned += rows.length;
  for (const row of rows) {
    const r = fromSpendLog(row, ctx);
    if (r.ok) {
      if (opts.customer !== undefined && r.record.customerId !== opts.customer) tally.skippedOtherCustomers++;
      else records.push(r.record);
    } else if (opts.customer !== undefined) {
      tally.skippedOtherCustomers++;
    } else {
      rejected.push({ requestId: r.requestId ?? row.request_id, reason: r.reason, row });
    }
  }
  if (records.length === 0 && rejected.length === 0) return;

  const callIds = records
    .filter((r) => r.metadata.cache_hit === true && typeof r.metadata.litellm_call_id === "string")
    .map((r) => r.metadata.litellm_call_id as string);
  const known = await service.sql.unsafe<Known[]>(query("replay_known"), [
    records.map((r) => r.requestId),
    callIds,
    rejected.map((r) => r.requestId),
  ]);
  const stored = new Map<string, string>();
  const storedCalls = new Set<string>();
  const keptConflicts = new Set<string>();
  const keptRejections = new Set<string>();
  for (const k of known) {
    if (k.kind === "ledger") stored.set(k.key, k.fingerprint as string);
    else if (k.kind === "call") storedCalls.add(k.key);
    else if (k.kind === "conflict") keptConflicts.add(`${k.key}\n${k.fingerprint}`);
    else keptRejections.add(k.key);
  }

  const toWrite: UsageRecord[] = [];
  for (const r of records) {
    const c = tally.customer(r);
    const existing = stored.get(r.requestId);
    const callId = r.metadata.cache_hit === true ? r.metadata.litellm_call_id : undefined;
    if (existing === undefined && !(typeof callId === "string" && storedCalls.has(callId))) {
      toWrite.push(r);
      continue;
    }
    const fp = existing === undefined ? null : fingerprint(r);
    if (fp === null || fp === existing) {
      tally.duplicates++;
      c.already_in_ledger++;
    } else {
      tally.conflicts++;
      c.conflicts++;
      // Not kept yet: let the ledger record it (it keeps the first version and says "conflict").
      if (!keptConflicts.has(`${r.requestId}\n${fp}`)) toWrite.push(r);
    }
  }
  const rejections: Rejection[] = [];
  for (const x of rejected) {
    tally.rejected++;
    tally.reason(x.reason);
    if (!keptRejections.has(x.requestId)) {
      rejections.push({
        source: opts.source,
        requestId: x.requestId,
        reason: x.reason,
        payload: { from: "LiteLLM_SpendLogs", ...spendLogToPayload(x.row) },
      });
    }
  }

  if (opts.dryRun) {
    for (const r of toWrite) {
      if (stored.has(r.requestId)) continue; // a conflict, counted above
      tally.inserted++;
      tally.customer(r).new++;
      tally.eventsQueued += toLagoEvents(r, service.settings.lago).length;
    }
    return;
  }
  if (toWrite.length === 0 && rejections.length === 0) return;
  const outcomes = await service.ledger.write(toWrite, rejections);
  tally.rejectionsStored += rejections.length;
  toWrite.forEach((r, i) => {
    if (stored.has(r.requestId)) return; // a conflict, counted above
    const c = tally.customer(r);
    const outcome = outcomes[i];
    if (outcome === "accepted") {
      tally.inserted++;
      c.new++;
      tally.eventsQueued += toLagoEvents(r, service.settings.lago).length;
    } else if (outcome === "duplicate") {
      // Stored by the callback between our look-up and our commit.
      tally.duplicates++;
      c.already_in_ledger++;
    } else {
      tally.conflicts++;
      c.conflicts++;
    }
  });
}

/**
 * Runs page jobs with at most `depth` in flight, so the ledger commits one page while the next is
 * read, mapped and checked. Pages hold disjoint request ids, so their order does not matter. Waits
 * for every started job before returning or throwing.
 */
export async function pipelined<T>(
  pages: AsyncIterable<T>,
  job: (page: T) => Promise<void>,
  depth = 2,
): Promise<void> {
  const inflight: Promise<void>[] = [];
  let failure: { err: unknown } | null = null;
  const track = (p: Promise<void>) =>
    p.catch((err: unknown) => {
      failure ??= { err };
    });
  try {
    for await (const page of pages) {
      if (failure) break;
      inflight.push(track(job(page)));
      if (inflight.length >= depth) await inflight.shift();
    }
  } finally {
    await Promise.all(inflight);
  }
  if (failure) throw (failure as { err: unknown }).err;
}
