import type { Logger } from "pino";
import { arrayLiteral } from "../db/array-literal.ts";
import type { Sql } from "../db/pool.ts";
import { query } from "../db/queries.ts";
import type { OutgoingEvent } from "../lago/mapping.ts";
import { fingerprint, type UsageRecord } from "./record.ts";

// Hot statements are prepared once per connection: no parse and plan per request.
const PREPARED = { prepare: true } as const;

export type Outcome = "accepted" | "duplicate" | "conflict";

export interface Rejection {
  source: string;
  requestId: string | null;
  reason: string;
  payload: unknown;
}

interface Job {
  records: UsageRecord[];
  rejections: Rejection[];
  resolve: (outcomes: Outcome[]) => void;
  reject: (err: unknown) => void;
}

export interface LedgerOptions {
  /** Most transactions committing at once; each takes every request waiting at its start. */
  writers?: number;
  /** Most records one transaction takes from the queue. */
  maxRecordsPerCommit?: number;
  /**
   * Records that must be waiting before a transaction starts beside one already committing. Fewer
   * wait for that commit and go in the next group: small transactions cost PostgreSQL about as much
   * as large ones, so splitting a trickle of single-event posts over many writers only adds commits.
   */
  overlapAt?: number;
  /** How long a caller waits for its commit before it is told to retry (WRITE_TIMEOUT). */
  writeTimeoutMs?: number;
  mapEvents: (r: UsageRecord) => OutgoingEvent[];
  /** Called after a commit that created outgoing events (wakes the delivery worker). */
  onCommitted?: (outgoing: number) => void;
  log?: Logger;
}

/**
 * Writes usage records to the ledger with group commit: concurrent requests share transactions, so
 * many single-event posts cost a few commits instead of one each. A caller's promise resolves only
 * after the transaction holding its records has committed.
 */
export class Ledger {
  readonly #sql: Sql;
  readonly #opts: Required<Omit<LedgerOptions, "log" | "onCommitted">> &
    Pick<LedgerOptions, "log" | "onCommitted">;
  readonly #queue: Job[] = [];
  #waiting = 0;
  #active = 0;

  constructor(sql: Sql, opts: LedgerOptions) {
    this.#sql = sql;
    this.#opts = { writers: 4, maxRecordsPerCommit: 5000, overlapAt: 50, writeTimeoutMs: 8000, ...opts };
  }

  /**
   * Stores records (and rejected payloads, for the record); resolves with one outcome per record.
   * Rejects with code WRITE_TIMEOUT (a 503 for the sender) when no commit came within
   * writeTimeoutMs: postgres.js queues queries while it cannot connect, e.g. behind a proxy that
   * accepts and drops connections, and a sender must not hang on it. The write may still commit
   * later; the sender's retry then counts as a duplicate, never as a second row.
   */
  write(records: UsageRecord[], rejections: Rejection[] = []): Promise<Outcome[]> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            Object.assign(new Error(`no commit within ${this.#opts.writeTimeoutMs} ms`), {
              code: "WRITE_TIMEOUT",
            }),
          ),
        this.#opts.writeTimeoutMs,
      );
      const settle =
        <T>(f: (v: T) => void) =>
        (v: T) => {
          clearTimeout(timer);
          f(v);
        };
      this.#queue.push({ records, rejections, resolve: settle(resolve), reject: settle(reject) });
      this.#waiting += records.length;
      this.#pump();
    });
  }

  #pump(): void {
    while (
      this.#active < this.#opts.writers &&
      this.#queue.length > 0 &&
      (this.#active === 0 || this.#waiting >= this.#opts.overlapAt)
    ) {
      const jobs: Job[] = [];
      let n = 0;
      while (
        this.#queue.length > 0 &&
        (jobs.length === 0 || n + (this.#queue[0]?.records.length ?? 0) <= this.#opts.maxRecordsPerCommit)
      ) {
        const job = this.#queue.shift() as Job;
        jobs.push(job);
        n += job.records.length;
      }
      this.#waiting -= n;
      this.#active++;
      this.#commit(jobs)
        .catch((err: unknown) => {
          for (const j of jobs) j.reject(err);
        })
        .finally(() => {
          this.#active--;
          this.#pump();
        });
    }
  }

  async #commit(jobs: Job[]): Promise<void> {
    // First occurrence of a request id in this commit is the candidate; later ones are judged against it.
    const candidates = new Map<string, { record: UsageRecord; fp: string }>();
    const rows = new Columns(USAGE_COLUMNS);
    const events = new Columns(EVENT_COLUMNS);
    const perJob: { record: UsageRecord; fp: string; first: boolean }[][] = [];
    for (const job of jobs) {
      const entries = job.records.map((record) => {
        const fp = fingerprint(record);
        if (candidates.has(record.requestId)) return { record, fp, first: false };
        candidates.set(record.requestId, { record, fp });
        rows.add(toRow(record, fp));
        for (const e of this.#opts.mapEvents(record)) events.add(toEventRow(record, e));
        return { record, fp, first: true };
      });
      perJob.push(entries);
    }
    const rejections = jobs.flatMap((j) => j.rejections);
    // The common case is one statement in its own implicit transaction: one round trip to PostgreSQL
    // instead of three (BEGIN, INSERT, COMMIT). The statement is atomic: the ledger rows and their
    // outgoing events commit together or not at all, before any caller is answered.
    const inserted = new Set<string>();
    if (rows.length > 0) {
      let outgoing = 0;
      const res = await this.#sql.unsafe<{ request_id: string; outgoing: number }[]>(
        query("insert_usage"),
        [...rows.literals(), ...events.literals()],
        PREPARED,
      );
      for (const r of res) {
        inserted.add(r.request_id);
        outgoing = r.outgoing;
      }
      if (outgoing > 0) this.#opts.onCommitted?.(outgoing);
    }
    // Repeated request ids (stored before, or twice in this commit) and rejected payloads take a
    // second transaction, committed before anyone is answered. Its fresh snapshot sees the rows a
    // concurrent commit stored while our insert waited on them. Should it fail, every caller gets the
    // error, and a retry finds the first statement's rows stored: duplicates, not losses.
    const missing = [...candidates.keys()].filter((id) => !inserted.has(id));
    const existing = new Map<string, string>();
    const repeats = missing.length > 0 || perJob.some((entries) => entries.some((e) => !e.first));
    if (repeats || rejections.length > 0) {
      await this.#sql.begin(async (tx) => {
        if (missing.length > 0) {
          const found = await tx.unsafe<{ request_id: string; fingerprint: string }[]>(
            query("existing_fingerprints"),
            [missing],
            PREPARED,
          );
          for (const f of found) existing.set(f.request_id, f.fingerprint);
        }
        const conflicts: unknown[] = [];
        for (const entries of perJob) {
          for (const { record, fp, first } of entries) {
            const stored =
              first && inserted.has(record.requestId)
                ? undefined
                : (existing.get(record.requestId) ?? candidates.get(record.requestId)?.fp);
            if (stored !== undefined && stored !== fp) {
              conflicts.push({
                request_id: record.requestId,
                source: record.source,
                existing_fingerprint: stored,
                incoming_fingerprint: fp,
                incoming: toRow(record, fp),
              });
            }
          }
        }
        if (conflicts.length > 0) await tx.unsafe(query("insert_conflicts"), [JSON.stringify(conflicts)]);
        if (rejections.length > 0) {
          await tx.unsafe(query("insert_rejections"), [
            JSON.stringify(
              rejections.map((r) => ({
                source: r.source,
                request_id: r.requestId,
                reason: r.reason,
                payload: r.payload,
              })),
            ),
          ]);
        }
      });
    }
    jobs.forEach((job, i) => {
      const outcomes = (perJob[i] ?? []).map(({ record, fp, first }): Outcome => {
        if (first && inserted.has(record.requestId)) return "accepted";
        const stored = existing.get(record.requestId) ?? candidates.get(record.requestId)?.fp;
        if (stored !== fp) {
          this.#opts.log?.warn(
            { requestId: record.requestId, source: record.source },
            "conflict: request id already stored with different content; the first version is kept",
          );
          return "conflict";
        }
        return "duplicate";
      });
      job.resolve(outcomes);
    });
  }
}

const USAGE_COLUMNS = [
  "request_id",
  "event_time",
  "customer_id",
  "user_id",
  "team_id",
  "org_id",
  "api_key_hash",
  "model",
  "provider",
  "call_type",
  "status",
  "tokens_input",
  "tokens_output",
  "tokens_cached",
  "tokens_cache_write",
  "tokens_reasoning",
  "total_tokens",
  "cost_usd",
  "cost_source",
  "billable",
  "not_billable_reason",
  "source",
  "fingerprint",
  "metadata",
] as const;
const EVENT_COLUMNS = [
  "request_id",
  "transaction_id",
  "customer_id",
  "code",
  "event_timestamp",
  "properties",
  "precise_total_amount_cents",
  "external_subscription_id",
] as const;
// JSON-valued and boolean columns go as text (cast in SQL).
const JSON_COLUMNS = new Set(["metadata", "properties"]);

type Cell = string | number | null;

/** Rows as one array per column, in insert_usage.sql's parameter order, sent as array literals. */
class Columns {
  readonly #arrays: Cell[][];
  readonly #names: readonly string[];
  readonly #json: boolean[];
  length = 0;
  constructor(names: readonly string[]) {
    this.#names = names;
    this.#json = names.map((n) => JSON_COLUMNS.has(n));
    this.#arrays = names.map(() => []);
  }
  add(row: Record<string, unknown>): void {
    for (let i = 0; i < this.#names.length; i++) {
      const v = row[this.#names[i] as string] ?? null;
      (this.#arrays[i] as Cell[]).push(
        v === null
          ? null
          : this.#json[i]
            ? JSON.stringify(v)
            : typeof v === "boolean"
              ? String(v)
              : (v as string | number),
      );
    }
    this.length++;
  }
  literals(): string[] {
    return this.#arrays.map(arrayLiteral);
  }
}

function toRow(r: UsageRecord, fp: string) {
  return {
    request_id: r.requestId,
    event_time: r.timestamp,
    customer_id: r.customerId,
    user_id: r.userId,
    team_id: r.teamId,
    org_id: r.orgId,
    api_key_hash: r.apiKeyHash,
    model: r.model,
    provider: r.provider,
    call_type: r.callType,
    status: r.status,
    tokens_input: r.tokensInput,
    tokens_output: r.tokensOutput,
    tokens_cached: r.tokensCached,
    tokens_cache_write: r.tokensCacheWrite,
    tokens_reasoning: r.tokensReasoning,
    total_tokens: r.totalTokens,
    cost_usd: r.costUsd,
    cost_source: r.costSource,
    billable: r.billable,
    not_billable_reason: r.notBillableReason,
    source: r.source,
    fingerprint: fp,
    metadata: r.metadata,
  };
}

function toEventRow(r: UsageRecord, e: OutgoingEvent) {
  return {
    request_id: r.requestId,
    transaction_id: e.transactionId,
    customer_id: r.customerId,
    code: e.code,
    event_timestamp: e.timestamp,
    properties: e.properties,
    precise_total_amount_cents: e.preciseTotalAmountCents,
    external_subscription_id: e.externalSubscriptionId,
  };
}
