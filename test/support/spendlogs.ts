/**
 * The real LiteLLM_SpendLogs schema for tests: LiteLLM's own migrations, as shipped in the installed
 * `litellm-proxy-extras` package (.venv/litellm, made by scripts/ensure-litellm.sh), applied in order.
 * Nothing here re-types LiteLLM's tables, so a LiteLLM upgrade that changes SpendLogs shows up in the
 * tests.
 *
 * Rows are written as LiteLLM's spend_tracking_utils.get_logging_payload builds them: "startTime" in
 * UTC (timestamp without time zone), spend a float, cache_hit "True"/"False", metadata a JSON object
 * holding user_api_key_* and usage_object, the key's hash in api_key, the key's user in "user".
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Sql } from "../../src/db/pool.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const PYTHON = join(ROOT, ".venv", "litellm", "bin", "python");

let cachedDir: string | undefined;

/** litellm_proxy_extras/migrations of the pinned LiteLLM, found through the venv's own interpreter. */
export function litellmMigrationsDir(): string {
  if (cachedDir) return cachedDir;
  if (!existsSync(PYTHON)) {
    throw new Error(`${PYTHON} not found: run scripts/ensure-litellm.sh to install the pinned LiteLLM`);
  }
  const pkg = execFileSync(
    PYTHON,
    ["-c", "import litellm_proxy_extras, os; print(os.path.dirname(litellm_proxy_extras.__file__))"],
    { encoding: "utf8" },
  ).trim();
  cachedDir = join(pkg, "migrations");
  return cachedDir;
}

/** Every `<version>_<name>/migration.sql` in order (the folder names sort by their timestamp). */
export function litellmMigrations(): { name: string; sql: string }[] {
  const dir = litellmMigrationsDir();
  return readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(dir, d.name, "migration.sql")))
    .map((d) => d.name)
    .sort()
    .map((name) => ({ name, sql: readFileSync(join(dir, name, "migration.sql"), "utf8") }));
}

/**
 * Applies LiteLLM's migrations to a database, as `prisma migrate deploy` would. Files with
 * CREATE INDEX CONCURRENTLY cannot run as one multi-statement query (an implicit transaction), so
 * their statements run one by one.
 */
export async function applyLiteLLMMigrations(sql: Sql): Promise<number> {
  const migrations = litellmMigrations();
  for (const m of migrations) {
    try {
      if (/\bCONCURRENTLY\b/i.test(m.sql)) {
        for (const statement of splitStatements(m.sql)) await sql.unsafe(statement);
      } else {
        await sql.unsafe(m.sql);
      }
    } catch (err) {
      throw new Error(`LiteLLM migration ${m.name} failed: ${(err as Error).message}`);
    }
  }
  return migrations.length;
}

function splitStatements(text: string): string[] {
  const withoutComments = text
    .split("\n")
    .filter((l) => !/^\s*--/.test(l))
    .join("\n");
  return withoutComments
    .split(/;\s*(?:\n|$)/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** One SpendLogs row as LiteLLM writes it; fields of `over` replace the defaults. */
export interface SpendLogRow {
  request_id: string;
  call_type?: string;
  api_key?: string;
  spend?: number;
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
  startTime: Date;
  model?: string;
  model_group?: string;
  custom_llm_provider?: string;
  user?: string;
  team_id?: string;
  organization_id?: string;
  end_user?: string;
  cache_hit?: "True" | "False";
  status?: string;
  litellm_call_id?: string;
  /** Merged into the default metadata (user_api_key_* and usage_object). */
  metadata?: Record<string, unknown>;
  cached_tokens?: number;
  reasoning_tokens?: number;
}

const KEY_HASH = "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b";

function utcText(d: Date): string {
  return d.toISOString().replace("T", " ").replace("Z", "");
}

/** Inserts rows shaped as LiteLLM's SpendLogsPayload (prompts and responses left at their defaults). */
export async function insertSpendLogs(sql: Sql, rows: SpendLogRow[]): Promise<void> {
  if (rows.length === 0) return;
  const values = rows.map((r) => {
    const prompt = r.prompt_tokens ?? 12;
    const completion = r.completion_tokens ?? 8;
    const user = r.user ?? "user-789";
    const team = r.team_id ?? "team-456";
    const metadata = {
      user_api_key: KEY_HASH,
      user_api_key_alias: null,
      user_api_key_team_id: team || null,
      user_api_key_org_id: r.organization_id || null,
      user_api_key_user_id: user || null,
      user_api_key_team_alias: null,
      spend_logs_metadata: null,
      requester_ip_address: null,
      status: r.status ?? "success",
      usage_object: {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: r.total_tokens ?? prompt + completion,
        prompt_tokens_details: { cached_tokens: r.cached_tokens ?? 0, audio_tokens: 0 },
        completion_tokens_details: { reasoning_tokens: r.reasoning_tokens ?? 0, audio_tokens: 0 },
      },
      litellm_call_id: r.litellm_call_id ?? null,
      cost_breakdown: null,
      additional_usage_values: {},
      ...r.metadata,
    };
    return {
      request_id: r.request_id,
      call_type: r.call_type ?? "acompletion",
      api_key: r.api_key ?? KEY_HASH,
      spend: r.spend ?? 0.00046,
      total_tokens: r.total_tokens ?? prompt + completion,
      prompt_tokens: prompt,
      completion_tokens: completion,
      start: utcText(r.startTime),
      end: utcText(new Date(r.startTime.getTime() + 400)),
      model: r.model ?? "gpt-4o",
      model_id: "abc",
      model_group: r.model_group ?? r.model ?? "gpt-4o",
      custom_llm_provider: r.custom_llm_provider ?? "openai",
      api_base: "https://api.openai.com/v1",
      user,
      metadata,
      cache_hit: r.cache_hit ?? "False",
      cache_key: "Cache OFF",
      team_id: team,
      organization_id: r.organization_id ?? "",
      end_user: r.end_user ?? "customer-123",
      status: r.status ?? "success",
      litellm_call_id: r.litellm_call_id ?? null,
    };
  });
  await sql.unsafe(
    `INSERT INTO "LiteLLM_SpendLogs" (
       request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens,
       "startTime", "endTime", "completionStartTime", model, model_id, model_group, custom_llm_provider,
       api_base, "user", metadata, cache_hit, cache_key, request_tags, team_id, organization_id, end_user,
       messages, response, status, litellm_call_id)
     SELECT request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens,
       start::timestamp, "end"::timestamp, "end"::timestamp, model, model_id, model_group,
       custom_llm_provider, api_base, "user", metadata, cache_hit, cache_key, '[]'::jsonb, team_id,
       organization_id, end_user, '{"content": "secret prompt"}'::jsonb,
       '{"content": "secret answer"}'::jsonb, status, litellm_call_id
     FROM jsonb_to_recordset($1::text::jsonb) AS x(
       request_id text, call_type text, api_key text, spend double precision, total_tokens integer,
       prompt_tokens integer, completion_tokens integer, start text, "end" text, model text,
       model_id text, model_group text, custom_llm_provider text, api_base text, "user" text,
       metadata jsonb, cache_hit text, cache_key text, team_id text, organization_id text,
       end_user text, status text, litellm_call_id text)`,
    [JSON.stringify(values)],
  );
}

/**
 * Bulk rows in one statement (generate_series), for volume tests: `count` calls spread evenly over
 * [from, from + spanSeconds), request ids `${prefix}-<n>`, customers `${customerPrefix}<n % customers>`,
 * 100 prompt and 50 completion tokens and $0.00125 each.
 */
export async function bulkInsertSpendLogs(
  sql: Sql,
  opts: {
    count: number;
    from: Date;
    spanSeconds: number;
    prefix: string;
    customers: number;
    customerPrefix?: string;
  },
): Promise<void> {
  await sql.unsafe(
    `INSERT INTO "LiteLLM_SpendLogs" (
       request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens,
       "startTime", "endTime", "completionStartTime", model, model_id, model_group, custom_llm_provider,
       api_base, "user", metadata, cache_hit, cache_key, team_id, organization_id, end_user, status)
     SELECT $1::text || '-' || n, 'acompletion', $2::text, 0.00125, 150, 100, 50,
       ($3::timestamptz AT TIME ZONE 'UTC') + make_interval(secs => n * $4::float8 / $5::float8),
       ($3::timestamptz AT TIME ZONE 'UTC') + make_interval(secs => n * $4::float8 / $5::float8 + 0.4),
       ($3::timestamptz AT TIME ZONE 'UTC') + make_interval(secs => n * $4::float8 / $5::float8 + 0.4),
       'gpt-4o', 'abc', 'gpt-4o', 'openai', 'https://api.openai.com/v1', 'user-789',
       jsonb_build_object(
         'user_api_key', $2::text, 'user_api_key_user_id', 'user-789', 'user_api_key_team_id', 'team-456',
         'user_api_key_org_id', null, 'user_api_key_alias', null, 'status', 'success',
         'usage_object', jsonb_build_object(
           'prompt_tokens', 100, 'completion_tokens', 50, 'total_tokens', 150,
           'prompt_tokens_details', jsonb_build_object('cached_tokens', 0),
           'completion_tokens_details', jsonb_build_object('reasoning_tokens', 0))),
       'False', 'Cache OFF', 'team-456', '', $6::text || (n % $7::int), 'success'
     FROM generate_series(0, $5::int - 1) AS n`,
    [
      opts.prefix,
      KEY_HASH,
      opts.from.toISOString(),
      opts.spanSeconds,
      opts.count,
      opts.customerPrefix ?? "bulk-customer-",
      opts.customers,
    ],
  );
  // As autovacuum would soon: without statistics the planner sorts the whole table for every page.
  await sql`ANALYZE "LiteLLM_SpendLogs"`;
}
