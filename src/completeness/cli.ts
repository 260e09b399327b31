import { type Command, InvalidArgumentError } from "commander";
import { isoTime, withService } from "../cli-support.ts";
import type { Service } from "../service.ts";
import { type BackfillProgress, type BackfillSummary, backfill } from "./backfill.ts";
import { type DriftReport, drift } from "./drift.ts";
import { addCustomer, LagoSetupError, lagoSetup, type SetupResult } from "./lago-setup.ts";
import { reconcile } from "./reconciler.ts";

/** Exit code of `report drift` when some difference is unexplained (1 stays "the command failed"). */
export const EXIT_UNEXPLAINED_DRIFT = 3;
/** Exit code of `reconcile` and `backfill` when LiteLLM_SpendLogs cannot be read: nothing was done. */
export const EXIT_SPENDLOGS_UNAVAILABLE = 4;

export interface CompletenessDeps {
  /** Runs fn with a service (no delivery worker) and closes it after. */
  withService?: <T>(fn: (service: Service) => Promise<T>) => Promise<T>;
  stdout?: NodeJS.WritableStream & { isTTY?: boolean };
  stderr?: NodeJS.WritableStream & { isTTY?: boolean };
}

function percent(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0 || n > 10_000) throw new InvalidArgumentError("must be a percentage ≥ 0");
  return n;
}

function currency(v: string): string {
  if (!/^[A-Z]{3}$/.test(v)) throw new InvalidArgumentError("must be an ISO 4217 code, e.g. USD");
  return v;
}

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

/**
 * Adds reconcile, backfill, report drift, lago setup and lago customer add to the program. Each
 * opens a service for the command only (no delivery worker: the running worker delivers what a
 * command queues).
 */
export function registerCompletenessCommands(program: Command, deps: CompletenessDeps = {}): void {
  const run = deps.withService ?? withService;
  const out = deps.stdout ?? process.stdout;
  const err = deps.stderr ?? process.stderr;

  program
    .command("reconcile")
    .description(
      "ingest calls from LiteLLM_SpendLogs that the ledger lacks (default: from the saved cursor to now " +
        `minus RECONCILE_SAFETY_LAG_SECONDS); exits ${EXIT_SPENDLOGS_UNAVAILABLE} when SpendLogs cannot be read`,
    )
    .option("--since <time>", "window start (ISO 8601); without it, continue from the saved cursor", isoTime)
    .option("--until <time>", "window end (ISO 8601, exclusive)", isoTime)
    .action(async (opts: { since?: Date; until?: Date }) => {
      const result = await run((service) => reconcile(service, { since: opts.since, until: opts.until }));
      out.write(json(result));
      if (!result.available) {
        err.write(`webhook-service: ${result.message}\n`);
        process.exitCode = EXIT_SPENDLOGS_UNAVAILABLE;
      }
    });

  program
    .command("backfill")
    .description(
      "replay a historical range of LiteLLM_SpendLogs into the ledger and out to Lago; exits " +
        `${EXIT_SPENDLOGS_UNAVAILABLE} when SpendLogs cannot be read`,
    )
    .requiredOption("--since <time>", "range start (ISO 8601)", isoTime)
    .requiredOption("--until <time>", "range end (ISO 8601, exclusive)", isoTime)
    .option("--customer <id>", "only this customer's calls")
    .option("--dry-run", "count what would be stored; store nothing", false)
    .option("--json", "print the summary as JSON", false)
    .action(async (opts: { since: Date; until: Date; customer?: string; dryRun: boolean; json: boolean }) => {
      if (!(opts.since < opts.until)) throw new InvalidArgumentError("--since must be before --until");
      const bar = progressReporter(err);
      const summary = await run((service) =>
        backfill(service, {
          since: opts.since,
          until: opts.until,
          customer: opts.customer,
          dryRun: opts.dryRun,
          onProgress: bar.update,
        }),
      );
      bar.done();
      out.write(opts.json ? json(summary) : backfillText(summary));
      if (!summary.spendlogs.available) process.exitCode = EXIT_SPENDLOGS_UNAVAILABLE;
    });

  const report = program.command("report").description("billing completeness reports");
  report
    .command("drift")
    .description(
      "compare SpendLogs, the ledger and Lago per customer and day; exits " +
        `${EXIT_UNEXPLAINED_DRIFT} when a difference is unexplained`,
    )
    .requiredOption("--since <time>", "range start (ISO 8601)", isoTime)
    .option("--until <time>", "range end (ISO 8601, exclusive; default now)", isoTime)
    .option("--json", "print the report as JSON", false)
    .action(async (opts: { since: Date; until?: Date; json: boolean }) => {
      const until = opts.until ?? new Date();
      if (!(opts.since < until)) throw new InvalidArgumentError("--since must be before --until");
      const result = await run((service) => drift(service, { since: opts.since, until }));
      out.write(opts.json ? json(result) : driftText(result));
      if (result.unexplained) process.exitCode = EXIT_UNEXPLAINED_DRIFT;
    });

  const lago = program.command("lago").description("set Lago up for this service");
  lago
    .command("setup")
    .description(
      "create (idempotently) the billable metric of LAGO_BILLING_MODE with filters for every model in " +
        "config.yaml, and optionally a plan priced from config.yaml",
    )
    .option("--plan <code>", "also create this plan, with per-model prices from config.yaml")
    .option("--markup <percent>", "added to config.yaml's prices in the plan", percent)
    .option("--currency <code>", "the plan's currency", currency, "USD")
    .option("--dry-run", "say what would change; change nothing", false)
    .action(async (opts: { plan?: string; markup?: number; currency: string; dryRun: boolean }) => {
      const result = await run((service) =>
        lagoSetup(service, {
          plan: opts.plan,
          markupPercent: opts.markup,
          currency: opts.currency,
          dryRun: opts.dryRun,
        }),
      ).catch(setupError);
      writeSetup(result, out, err);
    });

  lago
    .command("customer")
    .description("Lago customers")
    .command("add <external_id>")
    .description("create a customer and, with --plan, its subscription (id by LAGO_SUBSCRIPTION_MAPPING)")
    .option("--name <name>", "display name")
    .option("--plan <code>", "subscribe the customer to this plan")
    .option("--subscription-id <id>", "subscription external id (default: by LAGO_SUBSCRIPTION_MAPPING)")
    .option(
      "--subscription-at <time>",
      "subscription start (ISO 8601), e.g. before backfilled usage",
      isoTime,
    )
    .action(
      async (
        externalId: string,
        opts: { name?: string; plan?: string; subscriptionId?: string; subscriptionAt?: Date },
      ) => {
        const result = await run((service) =>
          addCustomer(service, {
            externalId,
            name: opts.name,
            plan: opts.plan,
            subscriptionId: opts.subscriptionId,
            subscriptionAt: opts.subscriptionAt,
          }),
        ).catch(setupError);
        writeSetup(result, out, err);
      },
    );
}

function setupError(e: unknown): never {
  if (e instanceof LagoSetupError) throw new Error(e.message);
  throw e;
}

function writeSetup(result: SetupResult, out: NodeJS.WritableStream, err: NodeJS.WritableStream): void {
  for (const w of result.warnings) err.write(`warning: ${w}\n`);
  out.write(json(result));
}

/**
 * Progress on stderr: a redrawn bar on a terminal; otherwise a line per 10 % or per 10 s, so logs
 * of a long backfill stay readable.
 */
function progressReporter(stream: NodeJS.WritableStream & { isTTY?: boolean }) {
  const tty = stream.isTTY === true;
  let lastLine = 0;
  let lastDecile = -1;
  let drawn = false;
  return {
    update(p: BackfillProgress) {
      const fraction = p.total > 0 ? Math.min(1, p.scanned / p.total) : 1;
      const pct = Math.floor(fraction * 100);
      const text =
        `${p.scanned.toLocaleString("en-US")}/${p.total.toLocaleString("en-US")} rows ` +
        `· new ${p.inserted} · already ${p.duplicates} · conflicts ${p.conflicts} · rejected ${p.rejected} ` +
        `· at ${p.position}`;
      if (tty) {
        const width = 30;
        const filled = Math.round(fraction * width);
        stream.write(
          `\r[${"#".repeat(filled)}${".".repeat(width - filled)}] ${String(pct).padStart(3)}% ${text}`,
        );
        drawn = true;
        return;
      }
      const decile = Math.floor(pct / 10);
      if (decile !== lastDecile || Date.now() - lastLine > 10_000) {
        lastDecile = decile;
        lastLine = Date.now();
        stream.write(`backfill ${pct}% ${text}\n`);
      }
    },
    done() {
      if (drawn) stream.write("\n");
    },
  };
}

function backfillText(s: BackfillSummary): string {
  const lines = [
    `backfill ${s.since} .. ${s.until}${s.customer ? ` (customer ${s.customer})` : ""}${s.dry_run ? " [dry run: nothing stored]" : ""}`,
  ];
  if (!s.spendlogs.available) {
    lines.push(`nothing done: ${s.spendlogs.message}`);
    return `${lines.join("\n")}\n`;
  }
  lines.push(
    `  rows scanned          ${s.scanned}`,
    `  new in the ledger     ${s.new}`,
    `  already in the ledger ${s.already_in_ledger}`,
    `  conflicts             ${s.conflicts}`,
    `  rejected              ${s.rejected}`,
  );
  for (const [reason, n] of Object.entries(s.rejected_reasons)) lines.push(`    ${n}× ${reason}`);
  if (s.skipped_other_customers > 0)
    lines.push(`  other customers       ${s.skipped_other_customers} (skipped)`);
  lines.push(
    `  Lago events queued    ${s.events_queued_for_lago}${s.dry_run ? " (would be)" : " (the delivery worker sends them)"}`,
  );
  const customers = Object.entries(s.customers);
  if (customers.length > 0) {
    lines.push("  per customer (new / already / conflicts):");
    for (const [id, c] of customers.slice(0, 50)) {
      lines.push(`    ${id}: ${c.new} / ${c.already_in_ledger} / ${c.conflicts}`);
    }
    if (customers.length > 50) lines.push(`    ... ${customers.length - 50} more (use --json)`);
  }
  for (const w of s.warnings) lines.push(`warning: ${w}`);
  lines.push(`done in ${(s.duration_ms / 1000).toFixed(1)} s`);
  return `${lines.join("\n")}\n`;
}

function driftText(r: DriftReport): string {
  const lines = [`drift ${r.since} .. ${r.until} (billing mode ${r.billing_mode})`];
  if (!r.spendlogs.available) lines.push(`SpendLogs not compared: ${r.spendlogs.message}`);
  const header = ["customer", "day", "kind", "calls", "spendlogs", "ledger", "delivered", ""];
  const rows = r.differences.map((d) => [
    d.customer ?? "(none)",
    d.day,
    d.kind,
    String(d.calls),
    d.spendlogs ?? "-",
    d.ledger ?? "-",
    d.delivered ?? "-",
    d.unexplained ? "UNEXPLAINED" : "explained",
  ]);
  if (rows.length > 0) {
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
    const fmt = (row: string[]) =>
      row
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join("  ")
        .trimEnd();
    lines.push(fmt(header));
    r.differences.forEach((d, i) => {
      lines.push(fmt(rows[i] ?? []));
      lines.push(`    ${d.explanation}${d.states ? ` ${JSON.stringify(d.states)}` : ""}`);
    });
  }
  lines.push(
    `${r.days.length} customer-day(s), ${r.differences.length} difference(s), ${r.unexplained_count} unexplained`,
  );
  return `${lines.join("\n")}\n`;
}
