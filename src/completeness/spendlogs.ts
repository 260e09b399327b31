import { openPool, type Sql } from "../db/pool.ts";
import { query } from "../db/queries.ts";
import {
  fromLiteLLMPayload,
  type PayloadContext,
  type PayloadResult,
  type StandardLoggingPayload,
} from "../ingest/litellm-payload.ts";
import type { Service } from "../service.ts";

/** The columns of one LiteLLM_SpendLogs row the billing mapping reads (see spendlogs_page.sql). */
export interface SpendLogRow {
  request_id: string;
  call_type: string | null;
  api_key: string | null;
  spend: number | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number | null;
  /** "startTime" as Unix seconds (millisecond precision). */
  start_epoch: number;
  /** "startTime" as UTC wall-clock text (microseconds): the keyset position, passed back exactly. */
  start_key: string;
  model: string | null;
  model_id: string | null;
  model_group: string | null;
  custom_llm_provider: string | null;
  user: string | null;
  team_id: string | null;
  end_user: string | null;
  cache_hit: string | null;
  request_tags: unknown;
  meta_status: string | null;
  key_alias: string | null;
  key_user_id: string | null;
  key_team_id: string | null;
  key_org_id: string | null;
  litellm_call_id: string | null;
  usage_object: Record<string, unknown> | null;
}

/** Columns present since LiteLLM's baseline migration; the reader needs nothing newer. */
const REQUIRED_COLUMNS = [
  "request_id",
  "call_type",
  "api_key",
  "spend",
  "prompt_tokens",
  "completion_tokens",
  "total_tokens",
  "startTime",
  "model",
  "model_id",
  "model_group",
  "custom_llm_provider",
  "user",
  "team_id",
  "end_user",
  "cache_hit",
  "request_tags",
  "metadata",
];

export type Availability = { available: true; database: string } | { available: false; message: string };

const blank = (v: string | null | undefined): string | null =>
  v === null || v === undefined || v === "" ? null : v;

/**
 * A SpendLogs row as the StandardLoggingPayload the callback would have sent for the same call, so
 * the reconciler, backfill and drift report bill a call exactly as the callback path does. The
 * key's user, team and org are in both the metadata and columns; the metadata wins as in the payload.
 */
export function spendLogToPayload(row: SpendLogRow): StandardLoggingPayload {
  return {
    id: row.request_id,
    litellm_call_id: blank(row.litellm_call_id),
    call_type: row.call_type,
    status: row.meta_status === "failure" ? "failure" : "success",
    response_cost: row.spend,
    prompt_tokens: row.prompt_tokens,
    completion_tokens: row.completion_tokens,
    total_tokens: row.total_tokens,
    startTime: row.start_epoch,
    model: row.model,
    model_group: row.model_group,
    model_id: row.model_id,
    custom_llm_provider: row.custom_llm_provider,
    end_user: row.end_user,
    cache_hit: row.cache_hit,
    request_tags: row.request_tags,
    metadata: {
      user_api_key_hash: blank(row.api_key),
      user_api_key_alias: blank(row.key_alias),
      user_api_key_user_id: blank(row.key_user_id) ?? blank(row.user),
      user_api_key_team_id: blank(row.key_team_id) ?? blank(row.team_id),
      user_api_key_org_id: blank(row.key_org_id),
      user_api_key_end_user_id: null,
      usage_object: row.usage_object ?? {},
    },
  };
}

/**
 * Maps a SpendLogs row with the callback's rules. A rejection always names the row's request id,
 * even an empty one, so that re-reading the row never stores its rejection twice.
 */
export function fromSpendLog(row: SpendLogRow, ctx: PayloadContext): PayloadResult {
  const result = fromLiteLLMPayload(spendLogToPayload(row), ctx);
  return result.ok ? result : { ...result, requestId: result.requestId ?? row.request_id };
}

/** UTC wall-clock text of a Date, as "startTime" holds it. */
export function utcKey(d: Date): string {
  return d.toISOString().replace(/Z$/, "");
}

/**
 * Reads LiteLLM_SpendLogs, in this service's database or in LITELLM_DATABASE_URL's. A separate
 * database gets its own small pool, closed by close().
 */
export class SpendLogsReader {
  readonly sql: Sql;
  readonly #own: boolean;

  constructor(service: Pick<Service, "settings" | "sql">) {
    const url = service.settings.reconcile.databaseUrl;
    this.#own = url !== service.settings.databaseUrl;
    this.sql = this.#own
      ? openPool(url, { max: 3, applicationName: "webhook-service-spendlogs" })
      : service.sql;
  }

  /** Whether SpendLogs can be read here; when not, a sentence an operator can act on. */
  async probe(): Promise<Availability> {
    const [row] = await this.sql.unsafe<{ database: string; present: boolean; missing: string[] }[]>(
      query("spendlogs_probe"),
      [REQUIRED_COLUMNS],
    );
    const database = row?.database ?? "?";
    if (!row?.present) {
      return {
        available: false,
        message:
          `no LiteLLM_SpendLogs table in database "${database}": LiteLLM runs without a database or ` +
          "uses another one (set LITELLM_DATABASE_URL); nothing to read",
      };
    }
    if (row.missing.length > 0) {
      return {
        available: false,
        message: `LiteLLM_SpendLogs in "${database}" lacks column(s) ${row.missing.join(", ")}: unsupported LiteLLM version`,
      };
    }
    return { available: true, database };
  }

  /** Rows in [since, until), for a progress bar's total. */
  async count(since: Date, until: Date): Promise<number> {
    const [row] = await this.sql.unsafe<{ n: string }[]>(query("spendlogs_count"), [
      utcKey(since),
      utcKey(until),
    ]);
    return Number(row?.n ?? 0);
  }

  /**
   * Pages of rows in [since, until) in ("startTime", request_id) order. The next page is fetched
   * while the caller works on the current one; a page is never held twice in memory.
   */
  async *pages(
    since: Date,
    until: Date,
    opts: { pageSize?: number; signal?: AbortSignal } = {},
  ): AsyncGenerator<SpendLogRow[]> {
    const size = opts.pageSize ?? 5000;
    const end = utcKey(until);
    const fetch = (from: string, afterId: string | null) =>
      this.sql.unsafe<SpendLogRow[]>(query("spendlogs_page"), [from, end, afterId, size]);
    let next: Promise<SpendLogRow[]> | null = fetch(utcKey(since), null);
    while (next) {
      const rows: SpendLogRow[] = await next;
      const last = rows[rows.length - 1];
      next =
        rows.length === size && last && !opts.signal?.aborted ? fetch(last.start_key, last.request_id) : null;
      // A rejected prefetch must not surface as an unhandled rejection if the caller stops early.
      next?.catch(() => undefined);
      if (rows.length > 0) yield rows;
    }
  }

  async close(): Promise<void> {
    if (this.#own) await this.sql.end({ timeout: 5 });
  }
}
