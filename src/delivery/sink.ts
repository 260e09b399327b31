/**
 * The state of the one destination every worker in a process sends to. Any batch's answer can pause
 * all sending: a 429 until Lago's reset, an auth failure until the key works again, repeated
 * server errors for a short backoff. After a pause, one probe batch goes first.
 */
export type SinkStateName =
  | "ok"
  | "rate_limited"
  | "auth_failing"
  | "backing_off"
  | "metric_missing"
  | "not_configured";

export interface SinkState {
  state: SinkStateName;
  until: Date | null;
  error: string | null;
  since: Date;
}

export class Sink {
  #state: SinkStateName = "ok";
  #until = 0;
  #error: string | null = null;
  #since = Date.now();
  #failures = 0;
  /** 429s in a row without a wait named: each doubles the pause (up to the maximum). */
  #bare429 = 0;
  /** Counts pauses; results of requests sent before the current pause began are ignored. */
  #epoch = 0;
  readonly #now: () => number;
  readonly #backoffCapMs: number;
  readonly #authPauseMs: number;
  readonly #maxRateLimitPauseMs: number;

  constructor(
    opts: {
      now?: () => number;
      backoffCapMs?: number;
      authPauseMs?: number;
      maxRateLimitPauseMs?: number;
    } = {},
  ) {
    this.#now = opts.now ?? Date.now;
    this.#backoffCapMs = opts.backoffCapMs ?? 5000;
    this.#authPauseMs = opts.authPauseMs ?? 30_000;
    this.#maxRateLimitPauseMs = opts.maxRateLimitPauseMs ?? 60_000;
  }

  get epoch(): number {
    return this.#epoch;
  }

  get isOk(): boolean {
    return this.#state === "ok";
  }

  /** Milliseconds until sending may resume (0 = now). */
  waitMs(): number {
    return this.#state === "ok" ? 0 : Math.max(0, this.#until - this.#now());
  }

  snapshot(): SinkState {
    return {
      state: this.#state,
      until: this.#state === "ok" ? null : new Date(this.#until),
      error: this.#error,
      since: new Date(this.#since),
    };
  }

  #enter(state: SinkStateName, untilMs: number, error: string | null): void {
    if (this.#state !== state) this.#since = this.#now();
    this.#state = state;
    this.#until = untilMs;
    this.#error = error;
    this.#epoch++;
  }

  /** A batch sent in `epoch` went through. Returns true when this ended a pause. */
  succeeded(epoch: number): boolean {
    if (epoch !== this.#epoch && this.#state !== "ok") return false;
    this.#failures = 0;
    this.#bare429 = 0;
    if (this.#state === "ok") return false;
    this.#state = "ok";
    this.#error = null;
    this.#since = this.#now();
    return true;
  }

  /**
   * A 429. `wait` is what the answer asked for (null: it named no wait, so back off 1, 2, 4... s);
   * any pause is clamped to LAGO_RATE_LIMIT_MAX_PAUSE_SECONDS, so a header misread or misbehaving
   * proxy cannot stop delivery for longer. Returns the pause in ms; for an answer to a request sent
   * before the current pause began, what is left of that pause (the answer itself is ignored).
   */
  rateLimited(wait: { seconds: number; source: string } | null, epoch: number): number {
    if (epoch !== this.#epoch) return Math.max(0, this.#until - this.#now());
    const max = this.#maxRateLimitPauseMs;
    let ms: number;
    let why: string;
    if (wait === null) {
      this.#bare429++;
      ms = Math.min(max, 1000 * 2 ** Math.min(this.#bare429 - 1, 20));
      why = `429 from Lago without Retry-After or X-RateLimit-Reset: backing off ${ms / 1000} s`;
    } else {
      const asked = wait.seconds * 1000;
      ms = Math.min(max, Math.max(100, asked));
      why =
        asked > max
          ? `429 from Lago; ${wait.source} asked for ${Math.round(wait.seconds)} s, capped at ` +
            `${max / 1000} s (LAGO_RATE_LIMIT_MAX_PAUSE_SECONDS)`
          : `429 from Lago, waiting ${Math.round(ms / 100) / 10} s (${wait.source})`;
    }
    this.#enter("rate_limited", this.#now() + ms, why);
    return ms;
  }

  authFailed(error: string, epoch: number): void {
    if (epoch !== this.#epoch) return;
    this.#enter("auth_failing", this.#now() + this.#authPauseMs, `${error} — check LAGO_API_KEY`);
  }

  metricMissing(code: string): void {
    this.#enter(
      "metric_missing",
      this.#now() + 60_000,
      `billable metric "${code}" does not exist in Lago: run \`webhook-service lago setup\` or fix LAGO_METRIC_CODE`,
    );
  }

  failed(error: string, epoch: number): void {
    if (epoch !== this.#epoch) return;
    this.#failures++;
    if (this.#failures < 3 && this.#state === "ok") return;
    const delay = Math.min(this.#backoffCapMs, 250 * 2 ** Math.min(this.#failures, 10));
    this.#enter("backing_off", this.#now() + delay, error);
  }
}
