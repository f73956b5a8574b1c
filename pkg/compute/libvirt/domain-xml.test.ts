// Domain XML: hostile values stay data (property-tested over arbitrary strings), bad values are
// refused with InvalidSpecError naming the field, and the facts read back from XML are the ones written.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { InvalidSpecError } from "../driver/index.js";
import { buildDomainXml, type DomainParams, domainName, esc, parseDomainXml, vncOnSocket } from "./domain-xml.js";

const base: DomainParams = {
  name: "web-1",
  uid: "0b7f6a52-2f0e-4d3e-9a43-6f7c1f2b9e11",
  owner: "node-1",
  labels: { app: "web" },
  type: "qemu",
  vcpus: 1,
  memoryMiB: 128,
  kernel: "/var/cache/hypervisor/guest/vmlinuz",
  initrd: "/var/cache/hypervisor/guest/initrd.img",
  cmdline: "console=ttyS0",
  serialLog: "/var/lib/hypervisor/agent/libvirt/logs/web-1.log",
  network: { mode: "user" },
  balloonStatsPeriod: 2,
};

/** Every element name in document order: injected markup would add or reorder some. */
const elements = (xml: string) => [...xml.matchAll(/<([A-Za-z][\w:.-]*)/g)].map((m) => m[1]);

/** Strings made of XML's metacharacters, markup fragments and ordinary text. */
const markup = fc.string({
  unit: fc.constantFrom(
    "<",
    ">",
    "&",
    "'",
    '"',
    "/",
    "=",
    " ",
    "\t",
    "\n",
    "a",
    "é",
    "ü",
    "]]>",
    "<!--",
    "-->",
    "&amp;",
    "&#x3c;",
    "<?xml",
    "<!DOCTYPE",
    "CDATA[",
  ),
  maxLength: 40,
});

describe("domain XML", () => {
  it("describes the instance: name, metadata, memory, kernel boot, serial log, VNC on a unix socket, balloon", () => {
    const xml = buildDomainXml(base);
    assert.match(xml, /<domain type="qemu">/);
    assert.match(xml, /<name>hv-web-1<\/name>/);
    assert.match(xml, /<memory unit="MiB">128<\/memory>/);
    assert.match(xml, /<kernel>\/var\/cache\/hypervisor\/guest\/vmlinuz<\/kernel>/);
    assert.match(xml, /<graphics type="vnc">\s*<listen type="socket"\/>\s*<\/graphics>/);
    assert.doesNotMatch(/<graphics[\s\S]*<\/graphics>/.exec(xml)![0], /port=|autoport|listen="|type="address"/, "no VNC on TCP");
    assert.match(xml, /<stats period="2"\/>/);
    assert.doesNotMatch(xml, /<disk/);
    const facts = parseDomainXml(xml);
    assert.deepEqual(facts.instance, { name: "web-1", uid: base.uid, owner: "node-1", labels: { app: "web" } });
    assert.equal(facts.serialLog, base.serialLog);
    assert.equal(facts.memoryKiB, 128 * 1024);
    assert.equal(facts.vncOnTcp, undefined);
    assert.equal(domainName("web-1"), "hv-web-1");
  });

  it("reads the live VNC socket libvirt chose, and moves an older agent's TCP VNC to a socket", () => {
    const live = `<domain type='qemu' id='7'><name>hv-web-1</name><devices>
    <graphics type='vnc' socket='/var/lib/libvirt/qemu/domain-7-hv-web-1/vnc.sock'>
      <listen type='socket' socket='/var/lib/libvirt/qemu/domain-7-hv-web-1/vnc.sock'/>
    </graphics></devices></domain>`;
    const f = parseDomainXml(live);
    assert.equal(f.vncSocket, "/var/lib/libvirt/qemu/domain-7-hv-web-1/vnc.sock");
    assert.equal(f.vncPort, undefined);
    assert.equal(f.vncOnTcp, undefined);
    // As libvirt 9 serializes the inactive definition an older agent wrote, and as a one-liner.
    for (const graphics of [
      `<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>\n      <listen type='address' address='127.0.0.1'/>\n    </graphics>`,
      `<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>`,
    ]) {
      const old = `<domain type='qemu'><name>hv-web-1</name><devices>\n    <serial type='pty'/>\n    ${graphics}\n    <video><model type='vga'/></video>\n  </devices></domain>`;
      assert.equal(parseDomainXml(old).vncOnTcp, true);
      const moved = vncOnSocket(old);
      assert.equal(parseDomainXml(moved).vncOnTcp, undefined, moved);
      assert.doesNotMatch(moved, /127\.0\.0\.1|port=/);
      assert.match(moved, /<serial type='pty'\/>[\s\S]*<graphics type="vnc"><listen type="socket"\/><\/graphics>[\s\S]*<video>/);
    }
  });

  it("marks the domain with its cluster as well as its node, and reads marks made before clusters had ids", () => {
    const marked = parseDomainXml(buildDomainXml({ ...base, cluster: "5f0c6a1e-0b7e-4c38-9d55-3b1f7f0e2a11" })).instance;
    assert.equal(marked?.cluster, "5f0c6a1e-0b7e-4c38-9d55-3b1f7f0e2a11");
    assert.equal(marked?.owner, base.owner);
    const old = parseDomainXml(buildDomainXml(base)).instance;
    assert.equal(old?.uid, base.uid);
    assert.equal(old?.cluster, undefined, "an old mark has no cluster");
    assert.throws(() => buildDomainXml({ ...base, cluster: "a<b" }), /cluster/);
  });

  it("boots from a disk overlay when there is no kernel; kvm gets host CPU passthrough", () => {
    const xml = buildDomainXml({ ...base, kernel: undefined, initrd: undefined, cmdline: undefined, disk: "/d/web-1.qcow2", type: "kvm" });
    assert.match(xml, /<boot dev="hd"\/>/);
    assert.match(xml, /<cpu mode="host-passthrough"\/>/);
    assert.equal(parseDomainXml(xml).disk, "/d/web-1.qcow2");
  });

  it("keeps hostile label values and paths as data", () => {
    const hostile = `</hv:label></hv:labels></hv:instance></metadata><devices><disk type='file'><source file='/etc/shadow'/></disk></devices><x a="`;
    const params = {
      ...base,
      labels: { app: hostile, "q.io/amp": `a&b<c>"d"'e'` },
      cmdline: `console=ttyS0 x="</cmdline><y>"`,
      serialLog: `/tmp/a'b"&<c>.log`,
    };
    const xml = buildDomainXml(params);
    assert.deepEqual(elements(xml), elements(buildDomainXml({ ...base, labels: { app: "x", "q.io/amp": "y" } })));
    const facts = parseDomainXml(xml);
    assert.deepEqual(facts.instance?.labels, params.labels);
    assert.equal(facts.serialLog, params.serialLog);
    assert.equal(facts.disk, undefined);
  });

  it("property: any label value and cmdline round-trip without changing the document's structure", () => {
    const shape = elements(buildDomainXml({ ...base, labels: { app: "x" }, cmdline: "y" }));
    fc.assert(
      fc.property(markup, markup, (value, cmdline) => {
        fc.pre(cmdline !== "");
        const xml = buildDomainXml({ ...base, labels: { app: value }, cmdline });
        assert.deepEqual(elements(xml), shape);
        assert.equal(parseDomainXml(xml).instance?.labels.app, value);
      }),
      { numRuns: 500 },
    );
  });

  for (const [what, params, message] of [
    ["a name that is not a DNS label", { name: "web_1<x>" }, /name: "web_1<x>" is not an instance.s name on a node/],
    ["a uid with markup", { uid: "a'/><x" }, /uid: .* is not a uid/],
    ["an owner with markup", { owner: "n</hv:owner>" }, /owner: .* is not a node name/],
    ["zero vcpus", { vcpus: 0 }, /vcpus: 0 must be an integer from 1/],
    ["fractional memory", { memoryMiB: 1.5 }, /memory_mib: 1.5 must be an integer/],
    ["a label key with markup", { labels: { "a<b": "x" } }, /labels: key "a<b" is not a label key/],
    ["a control character", { labels: { app: "a\u0001b" } }, /holds a control character/],
    ["a bridge name with markup", { network: { mode: "bridge", bridge: "br0'/><x" } }, /network: bridge .* is not an interface name/],
    ["neither kernel nor disk", { kernel: undefined, initrd: undefined, cmdline: undefined }, /needs a kernel or a disk image/],
  ] as const)
    it(`refuses ${what}`, () => {
      assert.throws(
        () => buildDomainXml({ ...base, ...(params as Partial<DomainParams>) }),
        (e: unknown) => e instanceof InvalidSpecError && message.test(e.message),
      );
    });

  it("esc covers both quote styles", () => {
    assert.equal(esc(`<a href='x' b="y">&`), "&lt;a href=&apos;x&apos; b=&quot;y&quot;&gt;&amp;");
  });

  it("reads libvirt's own serialization: single quotes, any namespace prefix, live VNC port", () => {
    const live = `<domain type='qemu' id='3'>
  <name>hv-web-1</name>
  <metadata>
    <ns0:instance xmlns:ns0="${"https://hypervisor.dev/xmlns/instance/v1"}">
      <ns0:name>web-1</ns0:name>
      <ns0:uid>u-1</ns0:uid>
      <ns0:owner>node-1</ns0:owner>
      <ns0:labels>
        <ns0:label key='a'>x &amp; y</ns0:label>
      </ns0:labels>
    </ns0:instance>
    <other:thing xmlns:other='urn:x'><other:uid>nope</other:uid></other:thing>
  </metadata>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>98304</currentMemory>
  <devices>
    <disk type='file' device='cdrom'><source file='/iso'/></disk>
    <graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>`;
    const f = parseDomainXml(live);
    assert.deepEqual(f.instance, { name: "web-1", uid: "u-1", owner: "node-1", labels: { a: "x & y" } });
    assert.equal(f.vncPort, 5901);
    assert.equal(f.currentMemoryKiB, 98304);
    assert.equal(f.disk, undefined, "a cdrom is not the instance's disk");
    assert.equal(parseDomainXml(`<domain type='kvm'><name>host-vm</name></domain>`).instance, undefined, "not ours");
  });
});
