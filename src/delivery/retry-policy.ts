/** When to try an event again after a failed send, and when to give up. Pure, for testing. */
export interface RetryPolicy {
  baseMs: number;
  maxMs: number;
  maxAttempts: number;
  maxAgeHours: number;
}

/** Exponential backoff with full jitter: uniform in [0, min(max, base × 2^(attempt-1))]. */
export function backoffMs(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, Math.min(attempt - 1, 40)));
  return Math.floor(random() * ceiling);
}

/** Null to retry, or why the event is parked as failed. */
export function giveUpReason(
  policy: RetryPolicy,
  attempts: number,
  createdAtMs: number,
  nowMs: number,
): string | null {
  if (attempts >= policy.maxAttempts) return `gave up after ${attempts} attempts`;
  if (policy.maxAgeHours > 0 && nowMs - createdAtMs > policy.maxAgeHours * 3_600_000) {
    return `gave up: still failing ${policy.maxAgeHours} h after the event was received`;
  }
  return null;
}
