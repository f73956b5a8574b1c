/*
 * One configuration loader for every binary. A schema declares each setting once; its name is
 * the YAML key, the flag (--name) and, upper-cased with '_', the environment variable
 * (HYPERVISOR_NAME). The values come in four layers, each overriding the one before:
 *
 *   schema defaults ──► YAML file (--config FILE) ──► HYPERVISOR_* environment ──► flags
 *
 * Unknown keys, unknown flags and values of the wrong type are errors naming the key, the value
 * and where it came from: a typo in a config file must not silently fall back to a default.
 * A layer that sets a list or a map replaces it whole; a repeated flag accumulates.
 */
import { readFile } from "node:fs/promises";
import { parseDocument } from "yaml";

export type Field =
  | { type: "string"; default: string; description: string; secret?: boolean }
  | { type: "number"; default: number; description: string; integer?: boolean; min?: number; max?: number }
  | { type: "boolean"; default: boolean; description: string }
  | { type: "string[]"; default: string[]; description: string }
  | { type: "map"; default: Record<string, string>; description: string };

export type FieldType = Field["type"];

/** Setting names in kebab-case (node-name), identical in YAML and as flags. */
export type Schema = Record<string, Field>;

type ValueOf<F extends Field> = F["default"];

/** "node-name" → "nodeName". */
export type CamelCase<S extends string> = S extends `${infer H}-${infer T}` ? `${H}${Capitalize<CamelCase<T>>}` : S;

/** The loaded configuration: one camelCase property per setting. */
export type ConfigOf<S extends Schema> = { [K in keyof S & string as CamelCase<K>]: ValueOf<S[K]> };

export type Source = "default" | "file" | "env" | "flag";

export interface LoadOptions {
  /** Command-line arguments without node and the script (process.argv.slice(2)). */
  argv?: string[];
  /** Default process.env. */
  env?: Record<string, string | undefined>;
  /** Default "HYPERVISOR_". */
  envPrefix?: string;
  /** Config file to read when --config is not given ("" or absent: none). */
  defaultFile?: string;
}

export interface Loaded<S extends Schema> {
  config: ConfigOf<S>;
  /** Where each setting's value came from (kebab-case names). */
  sources: Record<keyof S & string, Source>;
  /** The YAML file that was read, if any. */
  file?: string;
  /** --help or -h was given: print usage(schema) and exit. */
  help: boolean;
}

/** A configuration error; `key` is the setting (or flag) at fault. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(
    message: string,
    readonly key?: string,
  ) {
    super(message);
  }
}

export const envName = (key: string, prefix = "HYPERVISOR_") => prefix + key.toUpperCase().replace(/-/g, "_");

export const camelCase = (key: string) => key.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());

export async function loadConfig<S extends Schema>(schema: S, opts: LoadOptions = {}): Promise<Loaded<S>> {
  const flags = parseFlags(schema, opts.argv ?? []);
  const values = new Map<string, unknown>();
  const sources = {} as Record<string, Source>;
  for (const [k, f] of Object.entries(schema)) {
    values.set(k, structuredClone(f.default));
    sources[k] = "default";
  }

  const file = flags.configFile ?? (opts.defaultFile || undefined);
  if (file !== undefined && !flags.help) {
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (e) {
      throw new ConfigError(`config file ${file}: ${(e as Error).message}`, "config");
    }
    for (const [k, v] of Object.entries(parseYaml(schema, file, text))) {
      values.set(k, v);
      sources[k] = "file";
    }
  }

  const env = opts.env ?? process.env;
  const prefix = opts.envPrefix ?? "HYPERVISOR_";
  for (const [k, f] of Object.entries(schema)) {
    const name = envName(k, prefix);
    const raw = env[name];
    if (raw === undefined) continue;
    values.set(k, fromString(f, raw, `environment variable ${name}`, k));
    sources[k] = "env";
  }

  for (const [k, v] of flags.values) {
    values.set(k, v);
    sources[k] = "flag";
  }

  const config: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(schema)) {
    const v = values.get(k);
    if (f.type === "number") checkNumber(f, v as number, sources[k] ?? "default", k);
    config[camelCase(k)] = v;
  }
  const out: Loaded<S> = { config: config as ConfigOf<S>, sources, help: flags.help };
  if (file !== undefined) out.file = file;
  return out;
}

interface ParsedFlags {
  values: Map<string, unknown>;
  configFile?: string;
  help: boolean;
}

/** Parses --name value, --name=value, --bool, --no-bool, repeated list/map flags, --config, --help. */
export function parseFlags(schema: Schema, argv: string[]): ParsedFlags {
  const out: ParsedFlags = { values: new Map(), help: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") {
      out.help = true;
      continue;
    }
    if (!arg.startsWith("--") || arg === "--")
      throw new ConfigError(`unexpected argument ${JSON.stringify(arg)}: settings are given as --name value`);
    const eq = arg.indexOf("=");
    let name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    let inline: string | undefined = eq >= 0 ? arg.slice(eq + 1) : undefined;
    if (name === "config") {
      const v = inline ?? argv[++i];
      if (v === undefined || v === "") throw new ConfigError("flag --config needs a file name", "config");
      out.configFile = v;
      continue;
    }
    let field = schema[name];
    if (!field && name.startsWith("no-") && schema[name.slice(3)]?.type === "boolean" && inline === undefined) {
      name = name.slice(3);
      field = schema[name];
      inline = "false";
    }
    if (!field) throw new ConfigError(`unknown flag --${name}${suggest(schema, name, "--")}`, name);
    const where = `flag --${name}`;
    if ("secret" in field && field.secret)
      throw new ConfigError(
        `flag --${name}: a secret is not taken on the command line, where every user of the machine can read it; ` +
          `give it in the config file, in ${envName(name)} or in ${name}-file`,
        name,
      );
    if (field.type === "boolean") {
      out.values.set(name, fromString(field, inline ?? "true", where, name));
      continue;
    }
    const raw = inline ?? argv[++i];
    if (raw === undefined) throw new ConfigError(`flag --${name} needs a value`, name);
    const v = fromString(field, raw, where, name);
    const prev = out.values.get(name);
    // Repeated list and map flags accumulate (--label a=1 --label b=2); scalars: the last wins.
    if (field.type === "string[]" && Array.isArray(prev)) out.values.set(name, [...(prev as string[]), ...(v as string[])]);
    else if (field.type === "map" && prev) out.values.set(name, { ...(prev as Record<string, string>), ...(v as Record<string, string>) });
    else out.values.set(name, v);
  }
  return out;
}

/** Validates a YAML document against the schema; returns the settings it sets. */
export function parseYaml(schema: Schema, file: string, text: string): Record<string, unknown> {
  const doc = parseDocument(text);
  if (doc.errors.length > 0) throw new ConfigError(`config file ${file}: ${doc.errors[0]!.message.split("\n")[0]!}`);
  const data: unknown = doc.toJS();
  if (data === null || data === undefined) return {};
  if (typeof data !== "object" || Array.isArray(data))
    throw new ConfigError(`config file ${file}: expected a mapping of settings at the top level`);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(data as Record<string, unknown>)) {
    const field = schema[k];
    const where = `config file ${file}: ${k}`;
    if (!field) throw new ConfigError(`config file ${file}: unknown key ${JSON.stringify(k)}${suggest(schema, k, "")}`, k);
    if (v === null || v === undefined) throw new ConfigError(`${where}: has no value`, k);
    out[k] = fromYaml(field, v, where, k);
  }
  return out;
}

function fromYaml(f: Field, v: unknown, where: string, key: string): unknown {
  const wrong = (what: string): never => {
    throw new ConfigError(`${where}: expected ${what}, got ${show(v)}`, key);
  };
  switch (f.type) {
    case "string":
      return typeof v === "string" ? v : wrong("a string");
    case "number":
      return typeof v === "number" && Number.isFinite(v) ? v : wrong("a number");
    case "boolean":
      return typeof v === "boolean" ? v : wrong("true or false");
    case "string[]":
      // A comma-separated string is accepted as a list, as on the command line.
      if (typeof v === "string") return splitList(v);
      if (Array.isArray(v) && v.every((x) => typeof x === "string")) return v;
      return wrong("a list of strings");
    case "map": {
      if (typeof v !== "object" || Array.isArray(v)) return wrong("a mapping of strings");
      for (const [mk, mv] of Object.entries(v as Record<string, unknown>)) {
        if (typeof mv !== "string") throw new ConfigError(`${where}.${mk}: expected a string (quote it), got ${show(mv)}`, key);
      }
      return { ...(v as Record<string, string>) };
    }
  }
}

function fromString(f: Field, raw: string, where: string, key: string): unknown {
  switch (f.type) {
    case "string":
      return raw;
    case "number": {
      const n = raw.trim() === "" ? NaN : Number(raw);
      if (!Number.isFinite(n)) throw new ConfigError(`${where}: expected a number, got ${show(raw)}`, key);
      return n;
    }
    case "boolean":
      if (/^(true|1|yes)$/i.test(raw)) return true;
      if (/^(false|0|no)$/i.test(raw)) return false;
      throw new ConfigError(`${where}: expected true or false, got ${show(raw)}`, key);
    case "string[]":
      return splitList(raw);
    case "map": {
      const m: Record<string, string> = {};
      for (const pair of splitList(raw)) {
        const eq = pair.indexOf("=");
        if (eq <= 0) throw new ConfigError(`${where}: expected key=value, got ${show(pair)}`, key);
        m[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
      return m;
    }
  }
}

function checkNumber(f: Extract<Field, { type: "number" }>, v: number, source: Source, key: string): void {
  if (f.integer && !Number.isInteger(v)) throw new ConfigError(`${key} (from ${source}): expected an integer, got ${v}`, key);
  if (f.min !== undefined && v < f.min) throw new ConfigError(`${key} (from ${source}): must be at least ${f.min}, got ${v}`, key);
  if (f.max !== undefined && v > f.max) throw new ConfigError(`${key} (from ${source}): must be at most ${f.max}, got ${v}`, key);
}

const splitList = (s: string) =>
  s
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x !== "");

function show(v: unknown): string {
  const s = typeof v === "string" ? JSON.stringify(v) : (JSON.stringify(v) ?? String(v));
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** " (did you mean --node-name?)" when a known name is within two edits. */
function suggest(schema: Schema, name: string, dashes: string): string {
  let best: string | undefined;
  let bestD = 3;
  for (const k of Object.keys(schema)) {
    const d = distance(k, name);
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best ? ` (did you mean ${dashes}${best}?)` : "";
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** Help text: one line per setting with its type, default and environment variable. */
export function usage(schema: Schema, program: string, summary: string, envPrefix = "HYPERVISOR_"): string {
  const lines = [
    `usage: ${program} [--config FILE] [--name value ...]`,
    "",
    summary,
    "",
    "settings (YAML key = flag; environment variable in brackets):",
  ];
  lines.push("  --config FILE              YAML file of settings (unknown keys are errors)");
  for (const [k, f] of Object.entries(schema)) {
    const arg =
      f.type === "boolean" ? "" : f.type === "map" ? " k=v" : f.type === "string[]" ? " a,b" : f.type === "number" ? " N" : " VALUE";
    const def = "secret" in f && f.secret ? "" : ` (default ${JSON.stringify(f.default)})`;
    lines.push(`  --${(k + arg).padEnd(25)} ${f.description}${def} [${envName(k, envPrefix)}]`);
  }
  return lines.join("\n");
}
