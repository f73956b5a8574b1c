/*
 * `user-cert create`: a client certificate from the cluster CA for a user (automation, a person
 * without an API token or OIDC). The key is made here and never sent; the server signs a CSR for
 * CN=user:<name> (AccessService.IssueUserCertificate, role admin). Presented with --client-cert,
 * the certificate is that user, with what role bindings of user:<name> give (docs/access.md).
 *
 *   key + CSR(CN=user:<name>) made here ──IssueUserCertificate(user, csr, ttl)──► server (the CA)
 *   <out>/<name>.key, <name>.crt, ca.crt (0600) ◄── certificate_pem, ca_pem, expire_time
 */
import { join, resolve } from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { IssueUserCertificateResponseSchema } from "../../api/gen/hypervisor/v1/access_pb.js";
import { generateKeyAndCsr, writeLeaf, writePrivateFile } from "../../pkg/pki/index.js";
import { checkName } from "../../pkg/validation/index.js";
import { tokenTtlSeconds } from "./access.js";
import type { Context } from "./context.js";
import { usageError } from "./errors.js";
import * as output from "./output.js";

/** The server's default lifetime of a user certificate (docs/access.md): short, as nothing revokes it. */
export const DEFAULT_USER_CERT_TTL_DAYS = 30;
const CA_FILE = "ca.crt";

function userName(value: string): string {
  const problem = checkName("--user", value);
  if (problem) throw new InvalidArgumentError(problem.replace(/^--user: /, ""));
  // <name>.crt beside ca.crt: the user "ca" would overwrite the cluster CA's file.
  if (value === "ca") throw new InvalidArgumentError(`"ca" would write its certificate over ${CA_FILE}; name the user otherwise`);
  return value;
}

export function userCertCommand(ctx: Context): Command {
  const cmd = new Command("user-cert")
    .alias("user-certs")
    .description("client certificates from the cluster CA for users (automation): rights come from the user's role bindings");

  cmd
    .command("create")
    .description("make a key here, have the cluster CA sign it for a user (role admin), write <name>.crt, <name>.key and ca.crt")
    .addOption(
      new Option("--user <name>", "the user the certificate names (CN=user:<name>): a DNS label").argParser(userName).makeOptionMandatory(),
    )
    .addOption(
      new Option(
        "--ttl <duration>",
        `how long it is valid, e.g. 12h, 720h, 30d; at most 365d (default ${DEFAULT_USER_CERT_TTL_DAYS}d)`,
      ).argParser(tokenTtlSeconds),
    )
    .requiredOption("--out <dir>", "directory to write the files to (made if absent, 0700; files there of the same names are replaced)")
    .action(async (opts: { user: string; ttl?: number; out: string }) => {
      if (opts.out === "") throw usageError("--out: give a directory");
      const dir = resolve(opts.out);
      const { keyPem, csrPem } = await generateKeyAndCsr(`user:${opts.user}`);
      const clients = ctx.clients();
      const res = await clients.access.issueUserCertificate(
        // 0: the server's default, so the one place it is decided is the server.
        { user: opts.user, csrPem, ttlSeconds: opts.ttl ?? 0 },
        { signal: ctx.signal },
      );
      await writeLeaf(dir, opts.user, { keyPem, certPem: res.certificatePem });
      await writePrivateFile(dir, CA_FILE, res.caPem);
      const format = ctx.format();
      if (format !== "table") {
        ctx.out(output.message(IssueUserCertificateResponseSchema, res, format));
        return;
      }
      ctx.out(usage(clients.server, dir, opts.user, res.expireTime ? timestampDate(res.expireTime) : undefined));
    });

  return cmd;
}

/** What was written and how to use it. */
export function usage(server: string, dir: string, user: string, expires: Date | undefined): string {
  const [crt, key, ca] = [join(dir, `${user}.crt`), join(dir, `${user}.key`), join(dir, CA_FILE)];
  const q = (s: string) => (/^[\w./:@=+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  const tls = `--ca-file ${q(ca)} --client-cert ${q(crt)} --client-key ${q(key)}`;
  return [
    `wrote ${crt}, ${key} and ${ca} (0600)${expires ? `; valid until ${expires.toISOString()}` : ""}`,
    `user ${user} holds what role bindings of user:${user} give (none until bound), e.g.:`,
    `  hypervisor-ctl role bind --user ${user} --role operator --project PROJECT`,
    "use it with no token set (a token, when one is sent, is who calls):",
    `  hypervisor-ctl --server ${q(server)} ${tls} whoami`,
    "or keep it in a context:",
    `  hypervisor-ctl config set-context ${user} --server ${q(server)} ${tls}`,
    "no revocation list exists: to cut it off, delete the user's role bindings; it expires at the time above",
    "",
  ].join("\n");
}
