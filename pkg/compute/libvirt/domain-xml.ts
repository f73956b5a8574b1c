/*
 * Domain XML for an instance, and the few facts read back from libvirt's live XML.
 *
 * Every value that comes from a user (name, uid, labels, cmdline, paths) goes through esc(): a
 * value holding <, &, ' or " stays character data and can never open an element or end an
 * attribute. Values that become element names or attribute names are never user-controlled.
 * Numbers are checked integers before they are printed.
 *
 * The instance's identity lives in <metadata> under our own namespace, so after an agent restart
 * list() finds our domains (and only ours) with their uid, and adopts them.
 */
import { isHostName } from "../../validation/index.js";
import { XMLParser } from "fast-xml-parser";
import { InvalidSpecError } from "../driver/index.js";

export const METADATA_NS = "https://hypervisor.dev/xmlns/instance/v1";
/** Domains we own are named with this prefix, so they never collide with the host's own domains. */
export const DOMAIN_PREFIX = "hv-";

export type NetworkSetting = { mode: "user" } | { mode: "bridge"; bridge: string } | { mode: "none" };

export interface DomainParams {
  /** Instance name (DNS label) and uid. */
  name: string;
  uid: string;
  /** The agent (node) that manages the domain; others on the same libvirtd leave it alone. */
  owner: string;
  /** The cluster id of that agent's cluster (empty: none known, no mark). */
  cluster?: string;
  labels: Record<string, string>;
  type: "kvm" | "qemu";
  vcpus: number;
  memoryMiB: number;
  /** Boot from kernel (+ initrd + cmdline) when set; otherwise from the disk. */
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  /** The instance's qcow2 overlay, if it has a disk. */
  disk?: string;
  /** Serial console log (virtlogd writes it). */
  serialLog: string;
  network: NetworkSetting;
  /** Seconds between guest memory statistics updates (virtio-balloon). */
  balloonStatsPeriod: number;
}

const UID_RE = /^[A-Za-z0-9-]{1,64}$/;
/** Node names, as the agent accepts them (DNS label). */
export const OWNER_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const BRIDGE_RE = /^[A-Za-z0-9_.-]{1,15}$/;
/** Label keys: the API's syntax (prefix/name); checked again here, the XML must not trust callers. */
const LABEL_KEY_RE = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;

/** XML character data and attribute values (both quote styles). */
export function esc(s: string): string {
  // Characters XML 1.0 cannot carry at all are refused rather than silently dropped.
  if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/.test(s))
    throw new InvalidSpecError(`value ${JSON.stringify(s)} holds a control character`);
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&apos;");
}

export function domainName(instance: string): string {
  return DOMAIN_PREFIX + instance;
}

function positiveInt(field: string, v: number, max: number): number {
  if (!Number.isInteger(v) || v < 1 || v > max) throw new InvalidSpecError(`${field}: ${v} must be an integer from 1 to ${max}`);
  return v;
}

/** Builds the persistent domain definition. Throws InvalidSpecError on a value it will not print. */
export function buildDomainXml(p: DomainParams): string {
  if (!isHostName(p.name)) throw new InvalidSpecError(`name: ${JSON.stringify(p.name)} is not an instance's name on a node`);
  if (!UID_RE.test(p.uid)) throw new InvalidSpecError(`uid: ${JSON.stringify(p.uid)} is not a uid`);
  if (!OWNER_RE.test(p.owner)) throw new InvalidSpecError(`owner: ${JSON.stringify(p.owner)} is not a node name`);
  if (p.cluster && !UID_RE.test(p.cluster)) throw new InvalidSpecError(`cluster: ${JSON.stringify(p.cluster)} is not a cluster id`);
  const vcpus = positiveInt("vcpus", p.vcpus, 512);
  const mem = positiveInt("memory_mib", p.memoryMiB, 16 * 1024 * 1024);
  const period = Number.isInteger(p.balloonStatsPeriod) && p.balloonStatsPeriod >= 0 ? p.balloonStatsPeriod : 0;
  if (!p.kernel && !p.disk) throw new InvalidSpecError("an instance of the libvirt driver needs a kernel or a disk image");
  if ((p.initrd || p.cmdline) && !p.kernel) throw new InvalidSpecError("initrd and cmdline need a kernel");

  const labels = Object.entries(p.labels)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => {
      if (!LABEL_KEY_RE.test(k)) throw new InvalidSpecError(`labels: key ${JSON.stringify(k)} is not a label key`);
      return `        <hv:label key="${esc(k)}">${esc(v)}</hv:label>`;
    });

  const os = [`    <type arch="x86_64" machine="pc">hvm</type>`];
  if (p.kernel) {
    os.push(`    <kernel>${esc(p.kernel)}</kernel>`);
    if (p.initrd) os.push(`    <initrd>${esc(p.initrd)}</initrd>`);
    if (p.cmdline) os.push(`    <cmdline>${esc(p.cmdline)}</cmdline>`);
  } else {
    os.push(`    <boot dev="hd"/>`);
  }

  const devices: string[] = [];
  if (p.disk) {
    devices.push(
      `    <disk type="file" device="disk">`,
      `      <driver name="qemu" type="qcow2" discard="unmap"/>`,
      `      <source file="${esc(p.disk)}"/>`,
      `      <target dev="vda" bus="virtio"/>`,
      `    </disk>`,
    );
  }
  switch (p.network.mode) {
    case "user":
      devices.push(`    <interface type="user">`, `      <model type="virtio"/>`, `    </interface>`);
      break;
    case "bridge":
      if (!BRIDGE_RE.test(p.network.bridge))
        throw new InvalidSpecError(`network: bridge ${JSON.stringify(p.network.bridge)} is not an interface name`);
      devices.push(
        `    <interface type="bridge">`,
        `      <source bridge="${esc(p.network.bridge)}"/>`,
        `      <model type="virtio"/>`,
        `    </interface>`,
      );
      break;
    case "none":
      break;
  }
  devices.push(
    // A pty keeps the console interactive for later attach; virtlogd copies everything to the log.
    `    <serial type="pty">`,
    `      <log file="${esc(p.serialLog)}" append="on"/>`,
    `      <target port="0"/>`,
    `    </serial>`,
    `    <console type="pty">`,
    `      <target type="serial" port="0"/>`,
    `    </console>`,
    // VNC on a unix socket that libvirt makes in the domain's private directory
    // (/var/lib/libvirt/qemu/domain-<id>-<name>/vnc.sock, owned by QEMU's user, 0750): nothing per VM
    // listens on TCP, and only root and QEMU's user reach it. The agent reaches it for the console path.
    `    <graphics type="vnc">`,
    `      <listen type="socket"/>`,
    `    </graphics>`,
    `    <video>`,
    `      <model type="vga"/>`,
    `    </video>`,
    `    <memballoon model="virtio">`,
    `      <stats period="${period}"/>`,
    `    </memballoon>`,
  );

  return [
    `<domain type="${p.type === "kvm" ? "kvm" : "qemu"}">`,
    `  <name>${esc(domainName(p.name))}</name>`,
    `  <metadata>`,
    `    <hv:instance xmlns:hv="${METADATA_NS}">`,
    `      <hv:name>${esc(p.name)}</hv:name>`,
    `      <hv:uid>${esc(p.uid)}</hv:uid>`,
    `      <hv:owner>${esc(p.owner)}</hv:owner>`,
    ...(p.cluster ? [`      <hv:cluster>${esc(p.cluster)}</hv:cluster>`] : []),
    `      <hv:labels>`,
    ...labels,
    `      </hv:labels>`,
    `    </hv:instance>`,
    `  </metadata>`,
    `  <memory unit="MiB">${mem}</memory>`,
    `  <currentMemory unit="MiB">${mem}</currentMemory>`,
    `  <vcpu placement="static">${vcpus}</vcpu>`,
    `  <os>`,
    ...os,
    `  </os>`,
    `  <features>`,
    `    <acpi/>`,
    `    <apic/>`,
    `  </features>`,
    ...(p.type === "kvm" ? [`  <cpu mode="host-passthrough"/>`] : []),
    `  <clock offset="utc"/>`,
    // The agent decides what a stopped guest means (restart policy), not libvirt.
    `  <on_poweroff>destroy</on_poweroff>`,
    `  <on_reboot>restart</on_reboot>`,
    `  <on_crash>destroy</on_crash>`,
    `  <devices>`,
    ...devices,
    `  </devices>`,
    `</domain>`,
    "",
  ].join("\n");
}

/** What the driver needs from a domain's (live or inactive) XML. */
export interface DomainFacts {
  /** Our metadata; undefined for a domain that is not ours. */
  instance?: { name: string; uid: string; owner: string; labels: Record<string, string>; cluster?: string };
  /** Live VNC unix socket (undefined while not running, or for a domain defined with a TCP VNC). */
  vncSocket?: string;
  /** Live VNC TCP port of a domain defined before VNC moved to a unix socket (-1 or undefined while not running). */
  vncPort?: number;
  /** The (inactive) definition puts VNC on TCP: a domain defined by an older agent. */
  vncOnTcp?: boolean;
  disk?: string;
  serialLog?: string;
  /** The serial console's pty on the host (running domains). */
  serialPty?: string;
  memoryKiB?: number;
  currentMemoryKiB?: number;
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: "@",
  removeNSPrefix: false,
  parseTagValue: false,
  parseAttributeValue: false,
  processEntities: true,
  // Label values are data: keep their whitespace exactly.
  trimValues: false,
  isArray: (name) => ["disk", "graphics", "serial", "interface", "label"].includes(name) || name.endsWith(":label"),
});

type XmlNode = Record<string, unknown>;

const text = (v: unknown): string | undefined =>
  typeof v === "string"
    ? v
    : v && typeof v === "object" && typeof (v as XmlNode)["#text"] === "string"
      ? ((v as XmlNode)["#text"] as string)
      : undefined;

const kib = (v: unknown): number | undefined => {
  const t = text(v);
  if (t === undefined) return undefined;
  const unit = (v as XmlNode)["@unit"];
  const n = Number(t);
  if (!Number.isFinite(n)) return undefined;
  switch (unit) {
    case undefined:
    case "KiB":
    case "k":
      return n;
    case "MiB":
    case "M":
      return n * 1024;
    case "GiB":
    case "G":
      return n * 1024 * 1024;
    default:
      return undefined;
  }
};

export function parseDomainXml(xml: string): DomainFacts {
  const root = (parser.parse(xml) as XmlNode).domain as XmlNode | undefined;
  if (!root) throw new Error("not a domain XML document");
  const facts: DomainFacts = {};
  const meta = root.metadata as XmlNode | undefined;
  // libvirt re-serializes our metadata with the prefix it was given; match on the namespace URI.
  for (const [key, value] of Object.entries(meta ?? {})) {
    if (!key.endsWith(":instance") && key !== "instance") continue;
    const v = value as XmlNode;
    const ns = Object.entries(v).find(([k]) => k.startsWith("@xmlns"))?.[1];
    if (ns !== METADATA_NS) continue;
    const prefix = key.includes(":") ? key.slice(0, key.indexOf(":") + 1) : "";
    const labels: Record<string, string> = {};
    const labelList = ((v[`${prefix}labels`] as XmlNode | undefined)?.[`${prefix}label`] ?? []) as XmlNode[];
    for (const l of labelList) {
      const k = l["@key"];
      if (typeof k === "string") labels[k] = text(l) ?? "";
    }
    const name = text(v[`${prefix}name`]);
    const uid = text(v[`${prefix}uid`]);
    const owner = text(v[`${prefix}owner`]) ?? "";
    const cluster = text(v[`${prefix}cluster`]);
    if (name && uid) facts.instance = { name, uid, owner, labels, ...(cluster ? { cluster } : {}) };
  }
  facts.memoryKiB = kib(root.memory);
  facts.currentMemoryKiB = kib(root.currentMemory);
  const devices = (root.devices ?? {}) as XmlNode;
  for (const g of (devices.graphics ?? []) as XmlNode[]) {
    if (g["@type"] !== "vnc") continue;
    const listens = (Array.isArray(g.listen) ? g.listen : g.listen ? [g.listen] : []) as XmlNode[];
    const socket = g["@socket"] ?? listens.find((l) => l["@type"] === "socket")?.["@socket"];
    if (typeof socket === "string" && socket) facts.vncSocket = socket;
    else if (typeof g["@port"] === "string") facts.vncPort = Number(g["@port"]);
    if (!socket && !listens.some((l) => l["@type"] === "socket") && (g["@port"] !== undefined || g["@autoport"] !== undefined))
      facts.vncOnTcp = true;
  }
  for (const d of (devices.disk ?? []) as XmlNode[]) {
    const src = (d.source as XmlNode | undefined)?.["@file"];
    if (d["@device"] === "disk" && typeof src === "string") facts.disk = src;
  }
  for (const s of (devices.serial ?? []) as XmlNode[]) {
    const f = (s.log as XmlNode | undefined)?.["@file"];
    if (typeof f === "string") facts.serialLog = f;
    // Live XML only: the pty QEMU allocated for the guest's ttyS0.
    const pty = (s.source as XmlNode | undefined)?.["@path"];
    if (s["@type"] === "pty" && typeof pty === "string") facts.serialPty = pty;
  }
  return facts;
}

/** Every VNC <graphics> of a domain definition, on a unix socket libvirt chooses instead of TCP. */
export function vncOnSocket(xml: string): string {
  return xml.replace(
    /<graphics\s[^>]*?type=(['"])vnc\1[^>]*?(?:\/>|>[\s\S]*?<\/graphics>)/g,
    `<graphics type="vnc"><listen type="socket"/></graphics>`,
  );
}
