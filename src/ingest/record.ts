import { createHash } from "node:crypto";

export type UsageSource = "api" | "litellm" | "reconciler" | "backfill";

/** One LLM call as the ledger stores it, whatever format it arrived in. */
export interface UsageRecord {
  requestId: string;
  /** The call's start time, Unix seconds (millisecond precision kept). */
  timestamp: number;
  customerId: string;
  userId: string | null;
  teamId: string | null;
  orgId: string | null;
  apiKeyHash: string | null;
  model: string;
  provider: string | null;
  callType: string | null;
  status: "success" | "failure";
  /** All prompt tokens, cache reads and writes included (OpenAI's convention). */
  tokensInput: number;
  tokensOutput: number;
  /** Part of tokensInput read from the provider's prompt cache. */
  tokensCached: number;
  /** Part of tokensInput written to the provider's prompt cache. */
  tokensCacheWrite: number;
  /** Part of tokensOutput spent on reasoning. */
  tokensReasoning: number;
  totalTokens: number;
  /** USD as a decimal string, never a float. */
  costUsd: string;
  costSource: "reported" | "priced";
  billable: boolean;
  notBillableReason: string | null;
  source: UsageSource;
  metadata: Record<string, unknown>;
}

/**
 * Hash of what a call is billed on. Two deliveries of the same request id with the same fingerprint
 * are duplicates; with different fingerprints, a conflict. The source and metadata are not part of
 * it: the callback and the reconciler describe the same call.
 */
export function fingerprint(r: UsageRecord): string {
  const material = [
    r.customerId,
    r.model,
    r.status,
    r.tokensInput,
    r.tokensOutput,
    r.tokensCached,
    r.tokensCacheWrite,
    r.tokensReasoning,
    r.totalTokens,
    Number(r.costUsd).toFixed(9),
    Math.round(r.timestamp),
    r.billable,
  ].join("|");
  return createHash("sha256").update(material).digest("hex").slice(0, 32);
}
