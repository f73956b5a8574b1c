/*
 * `completion bash|zsh`: shell completion generated from the live commander tree, so a command or
 * flag added anywhere is completable without touching this file. The tree is flattened into small
 * lookup functions (subcommands, flags, value-taking flags, choices per path); a fixed driver
 * function walks the words typed so far to find the command path.
 */
import { Argument, Command, type Option } from "commander";
import type { Context } from "./context.js";

export const SHELLS = ["bash", "zsh"] as const;
export type Shell = (typeof SHELLS)[number];

interface Word {
  readonly name: string;
  readonly description: string;
}

interface Level {
  /** Canonical subcommand names, space-separated ("" at the root). */
  readonly path: string;
  readonly subcommands: readonly Word[];
  /** Subcommand name or alias → canonical name. */
  readonly lookup: ReadonlyMap<string, string>;
  /** Values of the first positional argument, when it has fixed choices (`completion bash`). */
  readonly argChoices: readonly string[];
  readonly flags: readonly Word[];
}

export interface Tree {
  readonly levels: readonly Level[];
  /** Every flag spelling that takes a value, with its choices (empty: free text or a file). */
  readonly valued: ReadonlyMap<string, readonly string[]>;
}

function flagWords(options: readonly Option[]): Word[] {
  const words: Word[] = [];
  for (const o of options) {
    if (o.hidden) continue;
    for (const f of [o.short, o.long]) if (f) words.push({ name: f, description: o.description });
  }
  return words;
}

/** Flattens the command tree. Root options are offered everywhere: commander accepts them anywhere. */
export function commandTree(root: Command): Tree {
  const levels: Level[] = [];
  const valued = new Map<string, string[]>();
  const help: Word[] = [
    { name: "-h", description: "display help" },
    { name: "--help", description: "display help" },
  ];
  const globals = flagWords(root.options);
  const visit = (cmd: Command, path: string): void => {
    for (const o of cmd.options) {
      if (!o.required && !o.optional) continue;
      for (const f of [o.short, o.long]) {
        if (!f) continue;
        valued.set(f, [...new Set([...(valued.get(f) ?? []), ...(o.argChoices ?? [])])]);
      }
    }
    const subs = cmd.commands.filter((c) => !(c as Command & { _hidden?: boolean })._hidden);
    const lookup = new Map<string, string>();
    for (const c of subs) for (const n of [c.name(), ...c.aliases()]) lookup.set(n, c.name());
    const first: Argument | undefined = cmd.registeredArguments[0];
    levels.push({
      path,
      subcommands: subs.map((c) => ({ name: c.name(), description: c.description() })),
      lookup,
      argChoices: first?.argChoices ?? [],
      flags: cmd === root ? [...globals, ...help] : [...flagWords(cmd.options), ...globals, ...help],
    });
    for (const c of subs) visit(c, path ? `${path} ${c.name()}` : c.name());
  };
  visit(root, "");
  return { levels, valued };
}

/** A single-quoted shell word; the same rule holds in bash and zsh. */
function quote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The lookup functions both shells share; `describe` adds zsh's "name:description" form. */
function lookups(fn: string, tree: Tree, describe: boolean): string {
  const word = (w: Word): string =>
    describe ? quote(`${w.name.replace(/:/g, "\\:")}:${w.description.replace(/\n/g, " ")}`) : quote(w.name);
  const lines: string[] = [];
  lines.push(`# ${fn}_sub PATH WORD: the canonical subcommand WORD names under PATH, if any.`);
  lines.push(`${fn}_sub() {`, `  case "$1/$2" in`);
  for (const l of tree.levels) {
    for (const [alias, name] of l.lookup) lines.push(`    ${quote(`${l.path}/${alias}`)}) echo ${quote(name)} ;;`);
  }
  lines.push("  esac", "}");
  lines.push(`# ${fn}_words PATH: subcommands (or argument values) to offer under PATH, one a line.`);
  lines.push(`${fn}_words() {`, `  case "$1" in`);
  for (const l of tree.levels) {
    const words = [...l.subcommands.map(word), ...l.argChoices.map((c) => word({ name: c, description: c }))];
    if (words.length > 0) lines.push(`    ${quote(l.path)}) printf '%s\\n' ${words.join(" ")} ;;`);
  }
  lines.push("  esac", "}");
  lines.push(`# ${fn}_flags PATH: the flags valid under PATH, one a line.`);
  lines.push(`${fn}_flags() {`, `  case "$1" in`);
  for (const l of tree.levels) lines.push(`    ${quote(l.path)}) printf '%s\\n' ${l.flags.map(word).join(" ")} ;;`);
  lines.push("  esac", "}");
  lines.push(`# ${fn}_valued FLAG: succeeds when FLAG takes a value (so the next word is not a command).`);
  lines.push(`${fn}_valued() {`, `  case "$1" in`);
  const valued = [...tree.valued.keys()];
  if (valued.length > 0) lines.push(`    ${valued.map(quote).join("|")}) return 0 ;;`);
  lines.push("  esac", "  return 1", "}");
  lines.push(`# ${fn}_choices FLAG: the values FLAG accepts, if they are a fixed set.`);
  lines.push(`${fn}_choices() {`, `  case "$1" in`);
  for (const [flag, choices] of tree.valued)
    if (choices.length > 0) lines.push(`    ${quote(flag)}) printf '%s\\n' ${choices.map(quote).join(" ")} ;;`);
  lines.push("  esac", "}");
  return lines.join("\n");
}

/** Shared by both shells: walk words 1..cword-1 and leave the command path in `cmdpath`. */
function walk(fn: string): string {
  // `cmdpath`, not `path`: in zsh `path` is tied to $PATH.
  return `  local cmdpath="" i w sub
  for ((i = first; i < cword; i++)); do
    w="\${typed[i]}"
    if [[ "$w" == "--" ]]; then return 0; fi
    if [[ "$w" == -* ]]; then
      if [[ "$w" != *=* ]] && ${fn}_valued "$w"; then ((i++)); fi
      continue
    fi
    sub="$(${fn}_sub "$cmdpath" "$w")"
    if [[ -n "$sub" ]]; then cmdpath="\${cmdpath:+$cmdpath }$sub"; fi
  done`;
}

export function bashScript(program: string, tree: Tree): string {
  const fn = `__${program.replace(/[^A-Za-z0-9]/g, "_")}`;
  return `# bash completion for ${program}, generated from its command tree by \`${program} completion bash\`.
# Load it now:      source <(${program} completion bash)
# Or permanently:   ${program} completion bash > /etc/bash_completion.d/${program}
${lookups(fn, tree, false)}

${fn}() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" prev="\${COMP_WORDS[COMP_CWORD-1]}"
  local -a typed=("\${COMP_WORDS[@]}")
  local first=1 cword=$COMP_CWORD
${walk(fn)}
  COMPREPLY=()
  if [[ "$cur" != -* ]] && ${fn}_valued "$prev"; then
    local choices
    choices="$(${fn}_choices "$prev")"
    if [[ -n "$choices" ]]; then
      mapfile -t COMPREPLY < <(compgen -W "$choices" -- "$cur")
    else
      mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    fi
    return 0
  fi
  if [[ "$cur" == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$(${fn}_flags "$cmdpath")" -- "$cur")
  else
    mapfile -t COMPREPLY < <(compgen -W "$(${fn}_words "$cmdpath")" -- "$cur")
  fi
  return 0
}
complete -F ${fn} ${program}
`;
}

export function zshScript(program: string, tree: Tree): string {
  const fn = `_${program.replace(/[^A-Za-z0-9]/g, "_")}`;
  return `#compdef ${program}
# zsh completion for ${program}, generated from its command tree by \`${program} completion zsh\`.
# Load it now:      source <(${program} completion zsh)
# Or permanently:   ${program} completion zsh > "\${fpath[1]}/_${program}"
compdef ${fn} ${program}
${lookups(fn, tree, true)}

${fn}() {
  local cur="\${words[CURRENT]}" prev="\${words[CURRENT-1]}"
  local -a typed=("\${words[@]}") reply
  local first=2 cword=$CURRENT
${walk(fn)}
  if [[ "$cur" != -* ]] && ${fn}_valued "$prev"; then
    local choices
    choices="$(${fn}_choices "$prev")"
    if [[ -n "$choices" ]]; then compadd -- \${(f)choices}; else _files; fi
    return
  fi
  if [[ "$cur" == -* ]]; then
    reply=("\${(@f)$(${fn}_flags "$cmdpath")}")
    _describe -t flags 'flag' reply
  else
    reply=("\${(@f)$(${fn}_words "$cmdpath")}")
    _describe -t commands 'command' reply
  fi
}

# Run at once when autoloaded from fpath; only define when sourced.
if [[ "\${funcstack[1]}" == "${fn}" ]]; then ${fn} "$@"; fi
`;
}

export function completionCommand(ctx: Context): Command {
  return new Command("completion")
    .description("print a shell completion script (source <(hypervisor-ctl completion bash))")
    .addArgument(new Argument("<shell>", "the shell to complete for").choices(SHELLS))
    .action((shell: Shell, _opts: unknown, cmd: Command) => {
      let root = cmd;
      while (root.parent) root = root.parent;
      const tree = commandTree(root);
      ctx.out(shell === "bash" ? bashScript(root.name(), tree) : zshScript(root.name(), tree));
    });
}
