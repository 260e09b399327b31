#!/usr/bin/env node
import { Command, InvalidArgumentError } from "commander";
import type { Logger } from "pino";
import { isoTime, settingsOrExit, withService } from "./cli-support.ts";
import { registerCompletenessCommands } from "./completeness/cli.ts";
import { startDriftCheck } from "./completeness/drift-check.ts";
import { startReconciler } from "./completeness/reconciler.ts";
import { migrate } from "./db/migrate.ts";
import { openPool } from "./db/pool.ts";
import { registerEntitlementCommands } from "./entitlements/cli.ts";
import { buildApp } from "./http/app.ts";
import { createLogger } from "./logger.ts";
import { type ParkedState, reprocess } from "./operations/reprocess.ts";
import { collectStats } from "./operations/stats.ts";
import { validateLago } from "./operations/validate.ts";
import { createService, type Service } from "./service.ts";
import type { Settings } from "./settings.ts";

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new InvalidArgumentError("must be a port number 0-65535");
  return n;
}

async function migrateOrExit(settings: Settings, log: Logger): Promise<void> {
  const sql = openPool(settings.databaseUrl, { max: 1, applicationName: "webhook-service-migrate" });
  try {
    const applied = await migrate(sql);
    if (applied.length > 0) log.info({ applied }, "migrations applied");
  } catch (err) {
    log.error(
      { err: (err as Error).message },
      "cannot migrate the database: check DATABASE_URL and that PostgreSQL is running and reachable",
    );
    await sql.end({ timeout: 1 });
    process.exit(1);
  }
  await sql.end({ timeout: 5 });
}

/** Stops in order on SIGTERM/SIGINT: stop accepting, settle in-flight work, close pools. A second signal forces exit. */
function onShutdown(log: Logger, close: () => Promise<void>): void {
  let closing = false;
  const handler = (signal: string) => {
    if (closing) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    closing = true;
    log.info({ signal }, "shutting down");
    close()
      .then(() => process.exit(0))
      .catch((err: unknown) => {
        log.error({ err }, "error during shutdown");
        process.exit(1);
      });
  };
  process.on("SIGTERM", () => handler("SIGTERM"));
  process.on("SIGINT", () => handler("SIGINT"));
}

const program = new Command()
  .name("webhook-service")
  .description("Usage ledger for LiteLLM calls and exactly-once delivery to Lago");

program
  .command("serve")
  .description("run the HTTP API (and, unless WORKER_ENABLED=false, the delivery worker)")
  .option("--host <host>", "address to bind (default: HOST or 0.0.0.0)")
  .option("--port <port>", "port to listen on (default: PORT or 3001)", port)
  .action(async (opts: { host?: string; port?: number }) => {
    const settings = settingsOrExit();
    const log = createLogger(settings.logLevel);
    if (!settings.webhookSecret)
      log.warn("WEBHOOK_SECRET is not set: /webhooks/* is open (refused when NODE_ENV=production)");
    if (!settings.lago.url || !settings.lago.apiKey) {
      log.warn(
        "LAGO_API_URL (or LAGO_WEBHOOK_URL) or LAGO_API_KEY is not set: usage is recorded but not delivered to Lago",
      );
    }
    await migrateOrExit(settings, log);
    const service = createService(settings, log, { worker: settings.workerEnabled });
    const app = await buildApp(service);
    await app.listen({ host: opts.host ?? settings.host, port: opts.port ?? settings.port });
    await service.worker?.start();
    const reconciler = settings.workerEnabled ? startReconciler(service) : null;
    const driftCheck = settings.workerEnabled ? startDriftCheck(service) : null;
    startHousekeeping(service);
    await startEntitlements(service);
    onShutdown(log, async () => {
      await app.close();
      await reconciler?.stop();
      await driftCheck?.stop();
      await service.close();
    });
  });

program
  .command("worker")
  .description("run only the delivery worker (any number of replicas)")
  .action(async () => {
    const settings = settingsOrExit();
    const log = createLogger(settings.logLevel);
    if (!settings.lago.url || !settings.lago.apiKey) {
      log.error("LAGO_API_URL (or LAGO_WEBHOOK_URL) and LAGO_API_KEY must be set for the worker");
      process.exit(2);
    }
    await migrateOrExit(settings, log);
    const service = createService(settings, log, { worker: true });
    await service.worker?.start();
    const reconciler = startReconciler(service);
    const driftCheck = startDriftCheck(service);
    startHousekeeping(service);
    await startEntitlements(service);
    log.info("delivery worker running");
    onShutdown(log, async () => {
      await reconciler?.stop();
      await driftCheck?.stop();
      await service.close();
    });
  });

program
  .command("migrate")
  .description("apply database migrations and exit")
  .action(async () => {
    const settings = settingsOrExit();
    await migrateOrExit(settings, createLogger(settings.logLevel));
  });

program
  .command("reprocess")
  .description("move failed and/or unbillable events back to pending")
  .option("--state <state...>", "failed, unbillable (default: both)")
  .option("--since <time>", "call time from (ISO 8601)", isoTime)
  .option("--until <time>", "call time until (ISO 8601, exclusive)", isoTime)
  .option("--customer <id>", "only this customer")
  .option("--id <id...>", "request or transaction ids")
  .option("--dry-run", "count only", false)
  .action(
    async (opts: {
      state?: string[];
      since?: Date;
      until?: Date;
      customer?: string;
      id?: string[];
      dryRun: boolean;
    }) => {
      const states = (opts.state ?? ["failed", "unbillable"]) as ParkedState[];
      for (const s of states) {
        if (s !== "failed" && s !== "unbillable")
          throw new InvalidArgumentError(`--state ${s}: use failed or unbillable`);
      }
      const result = await withService((service) =>
        reprocess(service.sql, service.settings.lago, {
          states,
          from: opts.since,
          to: opts.until,
          customerId: opts.customer,
          ids: opts.id,
          dryRun: opts.dryRun,
        }).then(async (r) => {
          if (!r.dry_run && r.moved > 0) await service.sql`SELECT pg_notify('lago_events', '')`;
          return r;
        }),
      );
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    },
  );

program
  .command("stats")
  .description("print processing statistics as JSON")
  .action(async () => {
    const stats = await withService((service) => collectStats(service));
    process.stdout.write(`${JSON.stringify(stats, null, 2)}\n`);
  });

/** `validate` exits with this when a check fails, so a deploy script or a cron job notices. */
const EXIT_VALIDATE_FAILED = 1;

program
  .command("validate")
  .description(
    "check Lago: URL, key, billable metric, the batch length Lago accepts, rate limiting, and every " +
      `customer's subscription against its usage (JSON; exit ${EXIT_VALIDATE_FAILED} when a check fails)`,
  )
  .action(async () => {
    const result = await withService((service) => validateLago(service));
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    if (!result.ok) process.exitCode = EXIT_VALIDATE_FAILED;
  });

/** Periodic upkeep in every process that runs a worker: prune old attempt logs. */
function startHousekeeping(service: Service): void {
  const prune = () =>
    service.sql
      .unsafe("DELETE FROM webhook_logs WHERE sent_at < now() - make_interval(days => $1::integer)", [
        Math.ceil(service.settings.webhookLogRetentionDays),
      ])
      .catch((err: unknown) => service.log.warn({ err }, "could not prune webhook_logs"));
  if (service.settings.webhookLogRetentionDays > 0) {
    void prune();
    setInterval(prune, 3_600_000).unref();
  }
}

/**
 * The entitlement engine competes for leadership in every serve/worker process (one leads); with
 * ENFORCEMENT=off it only tells the proxies so, when Redis is configured.
 */
async function startEntitlements(service: Service): Promise<void> {
  const { mode } = service.settings.entitlements;
  if (mode === "off" && !service.redis) return;
  await service.entitlements.engine.start();
  if (mode !== "off") service.log.info({ mode }, "entitlements: deciding from Lago and the ledger");
}

registerCompletenessCommands(program);
registerEntitlementCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`webhook-service: ${(err as Error).message}\n`);
  process.exit(1);
});
