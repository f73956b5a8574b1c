/** Typed errors of the PKI module; callers branch on the class (and `reason`), never on the message. */

export class PkiError extends Error {
  override name = "PkiError";
}

/** The CA directory or its files are not in a state this module may use (permissions, a half-made CA, a key that does not match). */
export class CaFilesError extends PkiError {
  override name = "CaFilesError";
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
  }
}

/** Why a CSR was refused: what the server reports back as InvalidArgument on csr_pem. */
export type CsrRejection = "malformed" | "bad-signature" | "wrong-subject" | "wrong-key";

export class CsrRejectedError extends PkiError {
  override name = "CsrRejectedError";
  constructor(
    readonly reason: CsrRejection,
    message: string,
  ) {
    super(message);
  }
}

/** Bad parameters for a certificate (a name, an address, a lifetime): names the field and the value. */
export class CertificateParamsError extends PkiError {
  override name = "CertificateParamsError";
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

/** A join token string that does not parse. The message names the part, never echoes the secret. */
export class JoinTokenFormatError extends PkiError {
  override name = "JoinTokenFormatError";
}
