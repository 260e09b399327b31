/** Where the tests find PostgreSQL and Redis (test.sh exports these; defaults match the CI machine). */
export const PG_ADMIN_URL = process.env.TEST_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379/15";
/** Two suites may share one server (e.g. two work trees) by giving each its own template name. */
export const TEMPLATE_DB = process.env.TEST_TEMPLATE_DB ?? "lago_billing_test_template";

/** The URL of database `name` on the test server. */
export function databaseUrl(name: string): string {
  const u = new URL(PG_ADMIN_URL);
  u.pathname = `/${name}`;
  return u.toString();
}
