/** Typed errors of the etcd package beyond the store's own (pkg/cluster/store/errors.ts). */
import { checkName } from "../../validation/index.js";
import { StoreError } from "../store/index.js";

/** A node name that is not a DNS label: no etcd user, role or key is built from it. */
export class InvalidNodeNameError extends StoreError {
  override name = "InvalidNodeNameError";
  constructor(readonly nodeName: string) {
    super(checkName("node name", nodeName) ?? `node name: ${JSON.stringify(nodeName)} is not valid`);
  }
}
