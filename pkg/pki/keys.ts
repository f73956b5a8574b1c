/*
 * ECDSA P-256 keys through Node's WebCrypto (what @peculiar/x509 signs with), and their PEM forms:
 * private keys as PKCS#8 "PRIVATE KEY", which Node's tls and etcd both read.
 */
import { createPrivateKey, createPublicKey, webcrypto } from "node:crypto";

export type CryptoKey = webcrypto.CryptoKey;
export type CryptoKeyPair = webcrypto.CryptoKeyPair;
import * as x509 from "@peculiar/x509";

// @peculiar/x509 keeps one global provider; Node's WebCrypto is the only one this process uses.
x509.cryptoProvider.set(webcrypto);

export const subtle = webcrypto.subtle;

/** The one key algorithm of the cluster; certificates are signed with ECDSA over SHA-256. */
export const EC_ALGORITHM = { name: "ECDSA", namedCurve: "P-256" } as const;
export const SIGNING_ALGORITHM = { name: "ECDSA", hash: "SHA-256" } as const;

export async function generateKeyPair(): Promise<CryptoKeyPair> {
  // Extractable: the private key is written to a 0600 file once, then only used to sign.
  return subtle.generateKey(EC_ALGORITHM, true, ["sign", "verify"]);
}

export async function privateKeyToPem(key: CryptoKey): Promise<string> {
  const der = new Uint8Array(await subtle.exportKey("pkcs8", key));
  return pem("PRIVATE KEY", der);
}

/** A PKCS#8 (or SEC1 "EC PRIVATE KEY") PEM as a signing key; refuses anything but P-256. */
export async function privateKeyFromPem(keyPem: string): Promise<CryptoKey> {
  const key = createPrivateKey(keyPem);
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new Error(
      `not an ECDSA P-256 key (${key.asymmetricKeyType ?? "unknown"} ${key.asymmetricKeyDetails?.namedCurve ?? ""})`.trimEnd(),
    );
  }
  const der = key.export({ format: "der", type: "pkcs8" });
  return subtle.importKey("pkcs8", der, EC_ALGORITHM, false, ["sign"]);
}

/** The DER SubjectPublicKeyInfo of a private key's public half, to match a key with its certificate. */
export function publicKeyDerOf(keyPem: string): Uint8Array {
  return new Uint8Array(createPublicKey(keyPem).export({ format: "der", type: "spki" }));
}

/** True when the DER SubjectPublicKeyInfo is an EC key on P-256. */
export function isP256(spkiDer: Uint8Array): boolean {
  try {
    const key = createPublicKey({ key: Buffer.from(spkiDer), format: "der", type: "spki" });
    return key.asymmetricKeyType === "ec" && key.asymmetricKeyDetails?.namedCurve === "prime256v1";
  } catch {
    return false;
  }
}

export function pem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64");
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}
