import { type Command, InvalidArgumentError } from "commander";
import { withService } from "../cli-support.ts";
import type { Service } from "../service.ts";
import { setOverride } from "./store.ts";
import { listEntitlements, showEntitlement } from "./view.ts";

/** `entitlements unblock` refused: the customer is blocked by Lago's state, not by an operator. */
export const EXIT_NOT_MANUAL = 5;

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

function reason(v: string): string {
  const t = v.trim();
  if (t.length < 3 || t.length > 500) throw new InvalidArgumentError("must be 3 to 500 characters");
  return t;
}

export interface EntitlementCliDeps {
  withService?: <T>(fn: (service: Service) => Promise<T>) => Promise<T>;
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
}

/**
 * `entitlements list|show|block|unblock|clear`. Overrides are written to PostgreSQL with the reason
 * and who gave it; the running service's engine publishes them to the proxies within a second.
 */
export function registerEntitlementCommands(program: Command, deps: EntitlementCliDeps = {}): void {
  const run = deps.withService ?? withService;
  const out = deps.stdout ?? process.stdout;
  const err = deps.stderr ?? process.stderr;
  const actorOf = (opts: { actor?: string }) => opts.actor ?? process.env.USER ?? "cli";
  const group = program
    .command("entitlements")
    .description("prepaid credits and spending limits: who the proxy serves, and manual overrides");

  group
    .command("list")
    .description("every tracked customer, blocked first, with the reason and remaining credit (JSON)")
    .option("--blocked", "only blocked customers", false)
    .option("--limit <n>", "most customers listed", (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("must be a positive integer");
      return n;
    })
    .action(async (opts: { blocked: boolean; limit?: number }) => {
      const r = await run((s) =>
        listEntitlements(s, { state: opts.blocked ? "blocked" : undefined, limit: opts.limit }),
      );
      out.write(json(r));
    });

  group
    .command("show <customer>")
    .description(
      "one customer's decision now, its inputs (wallets, subscriptions, limit, ledger), history and webhooks",
    )
    .action(async (customer: string) => {
      const r = await run((s) => showEntitlement(s, customer));
      if (!r) {
        err.write(`webhook-service: customer ${customer} is not tracked (no usage, no Lago webhook)\n`);
        process.exitCode = 1;
        return;
      }
      out.write(json(r));
    });

  group
    .command("block <customer>")
    .description(
      "block a customer whatever Lago says, until `unblock` or `clear`; the reason is shown to the customer",
    )
    .requiredOption("--reason <text>", "why (the customer reads it in the 402)", reason)
    .option("--actor <name>", "who (default: $USER)")
    .action(async (customer: string, opts: { reason: string; actor?: string }) => {
      const r = await run(async (s) => {
        await setOverride(s.sql, customer, "blocked", opts.reason, actorOf(opts));
        return showEntitlement(s, customer);
      });
      out.write(json({ customer_id: customer, override: "blocked", now: r?.now ?? null }));
    });

  group
    .command("unblock <customer>")
    .description(
      "lift a manual block (the customer is then decided from Lago again); --force allows a customer " +
        `blocked by Lago's state (credit, subscription, limit) anyway; exit ${EXIT_NOT_MANUAL} without --force`,
    )
    .requiredOption("--reason <text>", "why", reason)
    .option("--force", "allow the customer whatever its credit, subscription or limit, until `clear`", false)
    .option("--actor <name>", "who (default: $USER)")
    .action(async (customer: string, opts: { reason: string; force: boolean; actor?: string }) => {
      const r = await run(async (s) => {
        const before = await showEntitlement(s, customer);
        if (!opts.force && before && before.override?.state !== "blocked" && before.now.state === "blocked") {
          return { refused: true as const, reason: before.now.reason, message: before.now.message };
        }
        await setOverride(s.sql, customer, opts.force ? "allowed" : null, opts.reason, actorOf(opts));
        return { refused: false as const, after: await showEntitlement(s, customer) };
      });
      if (r.refused) {
        err.write(
          `webhook-service: ${customer} is not blocked by an operator but by ${r.reason} ("${r.message}"): ` +
            "fix it in Lago (top up, subscribe, raise the limit), or pass --force to allow it anyway\n",
        );
        process.exitCode = EXIT_NOT_MANUAL;
        return;
      }
      out.write(
        json({
          customer_id: customer,
          override: opts.force ? "allowed" : null,
          now: r.after?.now ?? null,
          ...(r.after?.now.state === "blocked"
            ? {
                note: `still blocked by ${r.after.now.reason}: the manual block was lifted, Lago's state decides`,
              }
            : {}),
        }),
      );
    });

  group
    .command("clear <customer>")
    .description("remove any manual override: the customer is decided from Lago and the ledger again")
    .requiredOption("--reason <text>", "why", reason)
    .option("--actor <name>", "who (default: $USER)")
    .action(async (customer: string, opts: { reason: string; actor?: string }) => {
      const r = await run(async (s) => {
        await setOverride(s.sql, customer, null, opts.reason, actorOf(opts));
        return showEntitlement(s, customer);
      });
      out.write(json({ customer_id: customer, override: null, now: r?.now ?? null }));
    });
}
