import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";

/**
 * What the proxies read, in Redis (proxy/lago_entitlements.py is the reader):
 *   <prefix>meta       JSON {v, epoch, mode, fail_mode, attribution, markup_percent, bill_cache_hits,
 *                      stale_after_seconds}; v grows with every publication, epoch changes when
 *                      everything was written again (a proxy seeing another epoch reloads it all)
 *   <prefix>entries    hash customer → JSON entry; a customer absent from it is allowed
 *   <prefix>changes    sorted set customer → the v of its last change (a proxy at version p reads
 *                      the members above p, then only those entries: one member per customer, so it
 *                      never grows beyond the customers ever published)
 *   <prefix>heartbeat  the service's clock (ms), rewritten every second: a proxy that sees it stop
 *                      moving knows the service is gone
 *   <prefix>rejections hash "<mode>:<reason>" → count, incremented by the proxies
 *   <prefix>proxies    hash "<host>:<pid>" → JSON {at, age, v, unavailable}, each proxy's last poll
 * Entries: {"s": "blocked"|"allowed", "r": reason, "m": message, "h": headroom cents (decimal
 * string, allowed customers with a wallet or a limit), "t": seen_through (Unix s of the newest call
 * start in the ledger: the proxy spends its own calls that started later against the headroom)}.
 */
export const REDIS_PREFIX = "lago-billing:entitlements:v1:";

export interface PublishedEntry {
  s: "blocked" | "allowed";
  r?: string | null;
  m?: string | null;
  h?: string;
  t?: number | null;
}

export interface PublishedMeta {
  mode: string;
  fail_mode: string;
  attribution: string[];
  markup_percent: number;
  bill_cache_hits: boolean;
  stale_after_seconds: number;
}

// One atomic step: a new version, the entries, their change marks, the meta naming the version.
const PUBLISH = `
local v = redis.call('INCR', KEYS[4])
local meta = cjson.decode(ARGV[1])
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2])
end
for i = 3, #ARGV, 2 do
  local c, e = ARGV[i], ARGV[i + 1]
  if e == '' then redis.call('HDEL', KEYS[1], c) else redis.call('HSET', KEYS[1], c, e) end
  redis.call('ZADD', KEYS[2], v, c)
end
meta['v'] = v
redis.call('SET', KEYS[3], cjson.encode(meta))
return v
`;

/** Writes decisions to Redis for the proxies; one publisher (the engine's leader) at a time. */
export class Publisher {
  readonly #redis: Redis;
  readonly #prefix: string;
  #epoch = randomUUID();
  #meta: PublishedMeta;
  version = 0;
  /** When a publication or a heartbeat last reached Redis (ms). */
  lastPublishedAt = 0;

  constructor(redis: Redis, meta: PublishedMeta, prefix = REDIS_PREFIX) {
    this.#redis = redis;
    this.#meta = meta;
    this.#prefix = prefix;
  }

  key(name: string): string {
    return `${this.#prefix}${name}`;
  }

  /**
   * Publishes changed entries (null: remove). full=true first removes every entry and starts a new
   * epoch, so proxies drop what they hold and reload.
   */
  async publish(changes: Map<string, PublishedEntry | null>, opts: { full?: boolean } = {}): Promise<number> {
    if (opts.full) this.#epoch = randomUUID();
    const args: string[] = [JSON.stringify({ ...this.#meta, epoch: this.#epoch }), opts.full ? "1" : "0"];
    for (const [customer, entry] of changes) args.push(customer, entry === null ? "" : JSON.stringify(entry));
    const v = (await this.#redis.eval(
      PUBLISH,
      4,
      this.key("entries"),
      this.key("changes"),
      this.key("meta"),
      this.key("version"),
      ...args,
    )) as number;
    this.version = Number(v);
    this.lastPublishedAt = Date.now();
    return this.version;
  }

  /** The service is alive: proxies compare successive values, never with their own clock. */
  async heartbeat(): Promise<void> {
    await this.#redis.set(this.key("heartbeat"), String(Date.now()));
    this.lastPublishedAt = Date.now();
  }

  /** Proxies' rejection counts ("<mode>:<reason>" → n) and their last polls. */
  async proxyReports(): Promise<{
    rejections: Record<string, number>;
    proxies: { id: string; at: number; age: number | null; v: number; unavailable: boolean }[];
  }> {
    const [rej, prox] = await Promise.all([
      this.#redis.hgetall(this.key("rejections")),
      this.#redis.hgetall(this.key("proxies")),
    ]);
    const rejections: Record<string, number> = {};
    for (const [k, v] of Object.entries(rej)) rejections[k] = Number(v);
    const proxies = [];
    const stale: string[] = [];
    for (const [id, text] of Object.entries(prox)) {
      try {
        const p = JSON.parse(text) as { at: number; age: number | null; v: number; unavailable: boolean };
        if (Date.now() / 1000 - p.at > 3600) stale.push(id);
        else proxies.push({ id, ...p });
      } catch {
        stale.push(id);
      }
    }
    if (stale.length > 0) await this.#redis.hdel(this.key("proxies"), ...stale);
    return { rejections, proxies };
  }
}
