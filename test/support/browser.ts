/*
 * Debian's Chromium driven by playwright-core for the UI tests: headless, no sandbox (root), no
 * background networking (the machine's network is closed). Screenshots go to test-results/.
 *
 * The server under test serves https with a certificate from the test's own cluster CA, which
 * Chromium does not know. Rather than ignoring certificate errors altogether, the browser is told
 * to accept the one public key of that server (--ignore-certificate-errors-spki-list): a page
 * served with any other key still fails, as it would for a user who trusts the cluster CA.
 */
import { createHash, X509Certificate } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { repoRoot } from "./procs.js";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const RESULTS_DIR = join(repoRoot, "test-results");

export interface BrowserOptions {
  /** A server certificate (PEM file, e.g. <server pki-dir>/server.crt) whose key the browser trusts. */
  trustServerCert?: string;
}

export async function launchBrowser(opts: BrowserOptions = {}): Promise<Browser> {
  const trust = opts.trustServerCert ? [`--ignore-certificate-errors-spki-list=${await spkiPin(opts.trustServerCert)}`] : [];
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
      "--disable-sync",
      ...trust,
    ],
  });
}

/** base64(sha256(SubjectPublicKeyInfo)) of the certificate in `certFile`: Chromium's SPKI pin. */
export async function spkiPin(certFile: string): Promise<string> {
  const spki = new X509Certificate(await readFile(certFile)).publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

/** Saves a full-page PNG under test-results/ and returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  await mkdir(RESULTS_DIR, { recursive: true });
  const path = join(RESULTS_DIR, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/**
 * Signs in on the management UI's sign-in page, which stands in for every page while the tab is
 * signed out, with `token`; done when the header offers to sign out. The page must show the sign-in.
 */
export async function signIn(page: Page, token: string): Promise<void> {
  await page.locator('[data-testid="signin-token"] input').fill(token);
  await page.click('[data-testid="signin-submit"]');
  await page.locator('[data-testid="logout"]').waitFor();
}

/** Signs in on the desktop page's dialog (a tab with no token, or a refused one, shows it). */
export async function signInDesktop(page: Page, token: string): Promise<void> {
  await page.locator('[data-testid="desktop-signin"][open]').waitFor();
  await page.locator('[data-testid="desktop-signin-token"]').fill(token);
  await page.click('[data-testid="desktop-signin-submit"]');
  await page.locator('[data-testid="desktop-signin"][open]').waitFor({ state: "detached" });
}
