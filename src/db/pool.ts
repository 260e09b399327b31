import postgres from "postgres";

export type Sql = postgres.Sql<Record<string, never>>;

export interface PoolOptions {
  max?: number;
  applicationName?: string;
  /** PostgreSQL ends a session idle this long inside a transaction, releasing its locks. */
  idleInTransactionTimeoutMs?: number;
}

/** Opens a PostgreSQL pool. Connections are lazy: nothing is dialled until the first query. */
export function openPool(url: string, opts: PoolOptions = {}): Sql {
  return postgres(url, {
    max: opts.max ?? 10,
    idle_timeout: 60,
    connect_timeout: 5,
    onnotice: () => {},
    connection: {
      application_name: opts.applicationName ?? "webhook-service",
      ...(opts.idleInTransactionTimeoutMs
        ? { idle_in_transaction_session_timeout: opts.idleInTransactionTimeoutMs }
        : {}),
    },
    transform: { undefined: null },
  }) as unknown as Sql;
}

// SQLSTATE classes and codes meaning "the database is not available right now, try again".
const UNAVAILABLE_CODES = new Set([
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now
  "53300", // too_many_connections
  "08000",
  "08003",
  "08006",
  "08001",
  "08004",
  "40001", // serialization_failure
  "40P01", // deadlock_detected
]);
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "WRITE_TIMEOUT", // the ledger gave up waiting for a commit
]);

/** True when an error means the database is unreachable or busy, so the caller should retry later. */
export function isDatabaseUnavailable(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && (UNAVAILABLE_CODES.has(code) || NETWORK_CODES.has(code))) return true;
  const errors = (err as { errors?: unknown }).errors;
  if (Array.isArray(errors)) return errors.some(isDatabaseUnavailable);
  return false;
}
