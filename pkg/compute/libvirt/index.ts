// The libvirt driver: QEMU/KVM virtual machines through libvirtd's RPC protocol (./rpc), with
// domain XML built from the instance spec, qcow2 overlays, serial logs, VNC and the balloon.
export { createLibvirtDriver, LibvirtDriver, libvirtCapabilities, parseNetwork, type LibvirtDriverOptions } from "./driver.js";
export { buildDomainXml, domainName, parseDomainXml, type DomainParams, type NetworkSetting } from "./domain-xml.js";
