/**
 * Typed settings read from the environment. Names match the README's table; every error says which
 * variable to set and how.
 */
export type BillingMode = "tokens" | "cost";
export type SubscriptionMapping = "same" | "template" | "lookup";
export type AttributionSource = "end_user" | "user_id" | "team_id" | "org_id" | "key_alias";
/** off: nothing is decided or enforced; observe: decided and published, the proxy only logs; enforce: the proxy rejects. */
export type EnforcementMode = "off" | "observe" | "enforce";
/** What the proxy does when Redis or the service cannot tell it who is blocked. */
export type FailMode = "open" | "closed";

export interface Settings {
  host: string;
  port: number;
  databaseUrl: string;
  production: boolean;
  webhookSecret: string | undefined;
  logLevel: string;
  lago: {
    url: string | undefined;
    apiKey: string | undefined;
    billingMode: BillingMode;
    metricCode: string;
    costMetricCode: string;
    costMarkupPercent: number;
    subscriptionMapping: SubscriptionMapping;
    subscriptionTemplate: string;
    subscriptionCacheTtlSeconds: number;
    batchSize: number;
    concurrency: number;
    lingerMs: number;
    rateLimitRps: number;
    rateLimitMaxPauseSeconds: number;
    requestTimeoutMs: number;
    maxAttempts: number;
    retryBaseMs: number;
    retryMaxMs: number;
    maxEventAgeHours: number;
    leaseSeconds: number;
  };
  redisUrl: string | undefined;
  workerEnabled: boolean;
  ingest: {
    maxBatch: number;
    bodyLimitBytes: number;
    maxAgeDays: number;
    maxFutureSeconds: number;
    attribution: AttributionSource[];
    billCacheHits: boolean;
  };
  litellmConfigPath: string;
  webhookLogRetentionDays: number;
  reconcile: {
    intervalSeconds: number;
    safetyLagSeconds: number;
    databaseUrl: string;
  };
  /** The periodic drift check behind lago_billing_drift_* (src/completeness/drift-check.ts). */
  driftCheck: {
    /** 0: off. */
    intervalSeconds: number;
    windowHours: number;
  };
  entitlements: EntitlementSettings;
}

/** Prepaid credits and spending limits from Lago, enforced at the proxy (README "Prepaid credits and limits"). */
export interface EntitlementSettings {
  mode: EnforcementMode;
  failMode: FailMode;
  /** A customer with a prepaid wallet is blocked once its remaining credit is at or below this. */
  minBalanceCents: number;
  refreshIntervalSeconds: number;
  /** Most requests per second the refresh sends to Lago (wallets, subscriptions, alerts, usage). */
  refreshRps: number;
  /** The code of the Lago alert threshold that is a hard spending limit. */
  limitThresholdCode: string;
  /** The markup the customer pays on the provider cost, as the ledger prices calls against credit. */
  priceMarkupPercent: number;
  /** The organization's HMAC key (Lago → Developers → Webhooks), for X-Lago-Signature-Algorithm: hmac. */
  hmacKey: string | undefined;
  /** Lago's RSA public key (PEM, or base64 of the PEM as Lago serves it); fetched from Lago when unset. */
  publicKey: string | undefined;
  /** Prefix of the Redis keys the proxies read (two deployments may share one Redis). */
  redisPrefix: string;
}

export class SettingsError extends Error {
  override name = "SettingsError";
}

type Env = Record<string, string | undefined>;

function str(env: Env, name: string, fallback: string): string {
  const v = env[name];
  return v === undefined || v === "" ? fallback : v;
}

function optional(env: Env, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v === "" ? undefined : v;
}

function num(env: Env, name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min || v > max) {
    throw new SettingsError(
      `${name}=${JSON.stringify(raw)} is not valid: set it to a number from ${min} to ${max}`,
    );
  }
  return v;
}

function int(env: Env, name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const v = num(env, name, fallback, min, max);
  if (!Number.isInteger(v)) throw new SettingsError(`${name}=${env[name]} must be a whole number`);
  return v;
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new SettingsError(`${name}=${JSON.stringify(raw)} is not valid: set it to true or false`);
}

function oneOf<T extends string>(env: Env, name: string, fallback: T, allowed: readonly T[]): T {
  const raw = str(env, name, fallback);
  if (!(allowed as readonly string[]).includes(raw)) {
    throw new SettingsError(`${name}=${JSON.stringify(raw)} is not valid: use one of ${allowed.join(", ")}`);
  }
  return raw as T;
}

const ATTRIBUTION: readonly AttributionSource[] = ["end_user", "user_id", "team_id", "org_id", "key_alias"];

/** Reads and checks every setting; throws SettingsError naming the variable to fix. */
export function loadSettings(env: Env = process.env): Settings {
  const production = str(env, "NODE_ENV", "development") === "production";
  const webhookSecret = optional(env, "WEBHOOK_SECRET");
  if (production && !webhookSecret) {
    throw new SettingsError(
      "WEBHOOK_SECRET is not set and NODE_ENV=production: set WEBHOOK_SECRET to a long random string " +
        "(e.g. `openssl rand -hex 32`) and give the same value to the LiteLLM callback",
    );
  }
  if (webhookSecret !== undefined && webhookSecret.length < 16 && production) {
    throw new SettingsError("WEBHOOK_SECRET is shorter than 16 characters: use a long random string");
  }
  const attribution = str(env, "CUSTOMER_ATTRIBUTION", "end_user,user_id,team_id")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const a of attribution) {
    if (!(ATTRIBUTION as readonly string[]).includes(a)) {
      throw new SettingsError(
        `CUSTOMER_ATTRIBUTION contains ${JSON.stringify(a)}: use ${ATTRIBUTION.join(", ")}`,
      );
    }
  }
  // LAGO_API_URL is the name; LAGO_WEBHOOK_URL (the specification's) is accepted as an alias.
  const apiUrl = optional(env, "LAGO_API_URL");
  const lagoVar = apiUrl !== undefined ? "LAGO_API_URL" : "LAGO_WEBHOOK_URL";
  const lagoUrl = apiUrl ?? optional(env, "LAGO_WEBHOOK_URL");
  if (lagoUrl !== undefined && !/^https?:\/\/[^/]/.test(lagoUrl)) {
    throw new SettingsError(
      `${lagoVar}=${lagoUrl} is not an http(s) URL: set it to e.g. https://api.getlago.com`,
    );
  }
  const template = str(env, "LAGO_SUBSCRIPTION_TEMPLATE", "{customer_id}");
  if (!template.includes("{customer_id}")) {
    throw new SettingsError("LAGO_SUBSCRIPTION_TEMPLATE must contain {customer_id}, e.g. sub_{customer_id}");
  }
  const databaseUrl = str(env, "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/litellm");
  const billingMode = oneOf(env, "LAGO_BILLING_MODE", "tokens", ["tokens", "cost"] as const);
  const costMarkupPercent = num(env, "LAGO_COST_MARKUP_PERCENT", 0, 0, 10_000);
  const entitlements = loadEntitlementSettings(env, {
    billingMode,
    costMarkupPercent,
    redis: optional(env, "REDIS_URL") !== undefined,
    lago: lagoUrl !== undefined && optional(env, "LAGO_API_KEY") !== undefined,
  });
  return {
    host: str(env, "HOST", "0.0.0.0"),
    port: int(env, "PORT", 3001, 0, 65535),
    databaseUrl,
    production,
    webhookSecret,
    logLevel: str(env, "LOG_LEVEL", "info"),
    lago: {
      url: lagoUrl?.replace(/\/+$/, "").replace(/\/api\/v1$/, ""),
      apiKey: optional(env, "LAGO_API_KEY"),
      billingMode,
      metricCode: str(env, "LAGO_METRIC_CODE", "llm_tokens"),
      costMetricCode: str(env, "LAGO_COST_METRIC_CODE", "llm_cost"),
      costMarkupPercent,
      subscriptionMapping: oneOf(env, "LAGO_SUBSCRIPTION_MAPPING", "same", [
        "same",
        "template",
        "lookup",
      ] as const),
      subscriptionTemplate: template,
      subscriptionCacheTtlSeconds: int(env, "LAGO_SUBSCRIPTION_CACHE_TTL_SECONDS", 300, 0),
      batchSize: int(env, "LAGO_BATCH_SIZE", 100, 1, 100),
      concurrency: int(env, "LAGO_WORKER_CONCURRENCY", 16, 1, 256),
      lingerMs: int(env, "LAGO_WORKER_LINGER_MS", 0, 0, 10_000),
      rateLimitRps: num(env, "LAGO_RATE_LIMIT_RPS", 0, 0),
      rateLimitMaxPauseSeconds: num(env, "LAGO_RATE_LIMIT_MAX_PAUSE_SECONDS", 60, 1, 3600),
      requestTimeoutMs: int(env, "LAGO_REQUEST_TIMEOUT_MS", 10_000, 100),
      maxAttempts: int(env, "LAGO_MAX_ATTEMPTS", 15, 1),
      retryBaseMs: int(env, "LAGO_RETRY_BASE_MS", 1000, 1),
      retryMaxMs: int(env, "LAGO_RETRY_MAX_MS", 300_000, 1),
      maxEventAgeHours: num(env, "LAGO_MAX_EVENT_AGE_HOURS", 72, 0),
      leaseSeconds: int(env, "LAGO_LEASE_SECONDS", 60, 2, 3600),
    },
    redisUrl: optional(env, "REDIS_URL"),
    workerEnabled: bool(env, "WORKER_ENABLED", true),
    ingest: {
      maxBatch: int(env, "INGEST_MAX_BATCH", 1000, 1, 100_000),
      bodyLimitBytes: int(env, "INGEST_BODY_LIMIT_BYTES", 10 * 1024 * 1024, 1024),
      maxAgeDays: num(env, "INGEST_MAX_AGE_DAYS", 35, 0),
      maxFutureSeconds: num(env, "INGEST_MAX_FUTURE_SECONDS", 300, 0),
      attribution: attribution as AttributionSource[],
      billCacheHits: bool(env, "BILL_CACHE_HITS", false),
    },
    litellmConfigPath: str(env, "LITELLM_CONFIG_PATH", "./config.yaml"),
    webhookLogRetentionDays: num(env, "WEBHOOK_LOG_RETENTION_DAYS", 30, 0),
    reconcile: {
      intervalSeconds: num(env, "RECONCILE_INTERVAL_SECONDS", 300, 0),
      safetyLagSeconds: num(env, "RECONCILE_SAFETY_LAG_SECONDS", 120, 0),
      databaseUrl: str(env, "LITELLM_DATABASE_URL", databaseUrl),
    },
    driftCheck: {
      intervalSeconds: num(env, "DRIFT_CHECK_INTERVAL_SECONDS", 900, 0, 7 * 86_400),
      windowHours: num(env, "DRIFT_CHECK_WINDOW_HOURS", 24, 1 / 60, 24 * 35),
    },
    entitlements,
  };
}

/**
 * The entitlement settings. Enforcement needs Lago (to read wallets and subscriptions) and Redis (to
 * tell the proxies), so observe/enforce without them is refused at start rather than silently inert.
 */
function loadEntitlementSettings(
  env: Env,
  ctx: { billingMode: BillingMode; costMarkupPercent: number; redis: boolean; lago: boolean },
): EntitlementSettings {
  const mode = oneOf(env, "ENFORCEMENT", "off", ["off", "observe", "enforce"] as const);
  if (mode !== "off" && !ctx.lago) {
    throw new SettingsError(
      `ENFORCEMENT=${mode} needs Lago: set LAGO_API_URL and LAGO_API_KEY (wallets and subscriptions are read there)`,
    );
  }
  if (mode !== "off" && !ctx.redis) {
    throw new SettingsError(
      `ENFORCEMENT=${mode} needs Redis: set REDIS_URL (the proxies read who is blocked there), ` +
        "and give the proxy the same Redis in LAGO_ENTITLEMENTS_REDIS_URL",
    );
  }
  const publicKey = optional(env, "LAGO_WEBHOOK_PUBLIC_KEY");
  // In cost mode the markup is on each event already; in tokens mode it is in the plan's prices.
  const markup = ctx.billingMode === "cost" ? ctx.costMarkupPercent : 0;
  return {
    mode,
    failMode: oneOf(env, "ENFORCEMENT_FAIL_MODE", "open", ["open", "closed"] as const),
    minBalanceCents: num(env, "ENTITLEMENT_MIN_BALANCE_CENTS", 0, -1e12, 1e12),
    refreshIntervalSeconds: num(env, "ENTITLEMENT_REFRESH_INTERVAL_SECONDS", 60, 1, 86_400),
    refreshRps: num(env, "ENTITLEMENT_REFRESH_RPS", 5, 0.1, 1000),
    limitThresholdCode: str(env, "ENTITLEMENT_LIMIT_THRESHOLD_CODE", "hard_limit"),
    priceMarkupPercent: num(env, "ENTITLEMENT_PRICE_MARKUP_PERCENT", markup, 0, 10_000),
    hmacKey: optional(env, "LAGO_WEBHOOK_HMAC_KEY"),
    publicKey,
    redisPrefix: str(env, "ENTITLEMENT_REDIS_PREFIX", "lago-billing:entitlements:v1:"),
  };
}
