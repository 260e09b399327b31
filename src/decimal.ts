/**
 * Exact decimal arithmetic for money: values are BigInt counts of 10^-18, so sums and products of
 * prices and token counts never pick up binary floating-point error.
 */
const SCALE = 18;
const ONE = 10n ** BigInt(SCALE);

/** Parses a decimal string or a finite JS number (via its shortest round-trip text). */
export function toUnits(value: string | number): bigint {
  let text = typeof value === "number" ? numberToText(value) : value.trim();
  if (/e/i.test(text)) text = expandExponent(text);
  let sign = 1n;
  if (text.startsWith("-")) {
    sign = -1n;
    text = text.slice(1);
  }
  if (!/^\d*(\.\d*)?$/.test(text) || text === "" || text === ".") throw new Error(`not a decimal: ${value}`);
  const [whole = "0", frac = ""] = text.split(".");
  const fracPadded = (frac + "0".repeat(SCALE)).slice(0, SCALE);
  return sign * (BigInt(whole || "0") * ONE + BigInt(fracPadded || "0"));
}

function numberToText(n: number): string {
  if (!Number.isFinite(n)) throw new Error(`not a finite number: ${n}`);
  const s = String(n);
  return /e/i.test(s) ? expandExponent(s) : s;
}

/** "1.5e-7" → "0.00000015", exactly (no float round trip). */
function expandExponent(s: string): string {
  const [mant = "0", expText = "0"] = s.toLowerCase().split("e");
  const exp = Number(expText);
  const neg = mant.startsWith("-");
  const digits = mant.replace("-", "");
  const [w = "0", f = ""] = digits.split(".");
  const all = w + f;
  const point = w.length + exp;
  let out: string;
  if (point <= 0) out = `0.${"0".repeat(-point)}${all}`;
  else if (point >= all.length) out = all + "0".repeat(point - all.length);
  else out = `${all.slice(0, point)}.${all.slice(point)}`;
  return (neg ? "-" : "") + out;
}

/** Units back to a plain decimal string without trailing zeros ("0.00375"). */
export function fromUnits(units: bigint, maxFraction = SCALE): string {
  const neg = units < 0n;
  let abs = neg ? -units : units;
  if (maxFraction < SCALE) {
    const step = 10n ** BigInt(SCALE - maxFraction);
    abs = ((abs + step / 2n) / step) * step; // round half up
  }
  const whole = abs / ONE;
  const frac = (abs % ONE).toString().padStart(SCALE, "0").slice(0, maxFraction).replace(/0+$/, "");
  return `${neg ? "-" : ""}${whole}${frac ? `.${frac}` : ""}`;
}

/** price (decimal) × integer count, exact. */
export function mulInt(price: string | number, count: number | bigint): bigint {
  return toUnits(price) * BigInt(count);
}

/** a × b for two decimals, exact to 18 places (truncated). */
export function mulDec(a: bigint, b: bigint): bigint {
  return (a * b) / ONE;
}

export const UNIT = ONE;
