import type { Sql } from "../db/pool.ts";
import { query } from "../db/queries.ts";
import type { Settings } from "../settings.ts";

export type ParkedState = "failed" | "unbillable";

export interface ReprocessFilter {
  states: ParkedState[];
  from?: Date | undefined;
  to?: Date | undefined;
  customerId?: string | undefined;
  ids?: string[] | undefined;
  dryRun: boolean;
}

export interface ReprocessResult {
  dry_run: boolean;
  matched: Record<ParkedState, number>;
  moved: number;
}

/**
 * Puts parked events back to pending. Unbillable events were never sent, so their subscription is
 * derived again from the current mapping (or looked up again before the first send).
 */
export async function reprocess(
  sql: Sql,
  lago: Settings["lago"],
  f: ReprocessFilter,
): Promise<ReprocessResult> {
  const template =
    lago.subscriptionMapping === "lookup"
      ? null
      : lago.subscriptionMapping === "same"
        ? "{customer_id}"
        : lago.subscriptionTemplate;
  const rows = await sql.unsafe<{ state: ParkedState; count: number; moved: number }[]>(query("reprocess"), [
    f.states,
    f.from ?? null,
    f.to ?? null,
    f.customerId ?? null,
    f.ids && f.ids.length > 0 ? f.ids : null,
    f.dryRun,
    template,
  ] as never);
  const matched: Record<ParkedState, number> = { failed: 0, unbillable: 0 };
  let moved = 0;
  for (const r of rows) {
    matched[r.state] = r.count;
    moved = r.moved;
  }
  return { dry_run: f.dryRun, matched, moved };
}
