//! Builds Ethernet/IPv4/TCP/UDP/ICMP/ARP frames for BPF_PROG_TEST_RUN and checks what the
//! programs wrote back (addresses, ports, checksums).

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

pub const POD_MAC: [u8; 6] = [0x0a, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const GW_MAC: [u8; 6] = [0x0a, 0x00, 0x00, 0x00, 0x00, 0xfe];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// The IPv4 header fields a test may want to vary.
#[derive(Debug, Clone)]
pub struct Ipv4Spec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub options: Vec<u8>,
    /// Flags and fragment offset field (host order), e.g. 0x2000 for "more fragments".
    pub frag: u16,
}

impl Ipv4Spec {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            options: Vec::new(),
            frag: 0,
        }
    }
}

pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&GW_MAC);
    frame.extend_from_slice(&POD_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An Ethernet frame carrying an IPv4 packet with `l4` as payload (checksums filled in).
pub fn ipv4_frame(spec: &Ipv4Spec, l4: &[u8]) -> Vec<u8> {
    assert!(spec.options.len().is_multiple_of(4) && spec.options.len() <= 40);
    let ihl = 5 + spec.options.len() / 4;
    let total = ihl * 4 + l4.len();
    let mut ip = Vec::with_capacity(total);
    ip.push(0x40 | ihl as u8);
    ip.push(0);
    ip.extend_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&0x1234u16.to_be_bytes());
    ip.extend_from_slice(&spec.frag.to_be_bytes());
    ip.push(64);
    ip.push(spec.proto);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&spec.src.octets());
    ip.extend_from_slice(&spec.dst.octets());
    ip.extend_from_slice(&spec.options);
    let csum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    ip.extend_from_slice(l4);
    ethernet(ETH_P_IP, &ip)
}

fn l4_with_checksum(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    mut l4: Vec<u8>,
    csum_off: usize,
) -> Vec<u8> {
    let sum = pseudo_header_sum(src, dst, proto, l4.len());
    let csum = checksum(&l4, sum);
    l4[csum_off..csum_off + 2].copy_from_slice(&csum.to_be_bytes());
    l4
}

pub fn tcp_segment(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(b"hello");
    l4_with_checksum(*src.ip(), *dst.ip(), TCP, tcp, 16)
}

pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    ipv4_frame(
        &Ipv4Spec::new(*src.ip(), *dst.ip(), TCP),
        &tcp_segment(src, dst, flags),
    )
}

pub fn udp_datagram(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let payload = b"datagram";
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    l4_with_checksum(*src.ip(), *dst.ip(), UDP, udp, 6)
}

pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    ipv4_frame(
        &Ipv4Spec::new(*src.ip(), *dst.ip(), UDP),
        &udp_datagram(src, dst),
    )
}

pub fn icmp_message(icmp_type: u8, code: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let csum = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    icmp
}

/// An ICMP echo request (type 8) or reply (type 0).
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, reply: bool) -> Vec<u8> {
    let icmp_type = if reply { 0 } else { 8 };
    ipv4_frame(
        &Ipv4Spec::new(src, dst, ICMP),
        &icmp_message(icmp_type, 0, id, 1, b"ping"),
    )
}

/// An ICMP destination-unreachable error from `src` to `dst` quoting `original` (an IPv4
/// frame): its IP header and first 8 bytes of payload.
pub fn icmp_unreachable(src: Ipv4Addr, dst: Ipv4Addr, code: u8, original: &[u8]) -> Vec<u8> {
    let quoted = &original[14..original.len().min(14 + 20 + 8)];
    ipv4_frame(
        &Ipv4Spec::new(src, dst, ICMP),
        &icmp_message(3, code, 0, 0, quoted),
    )
}

pub fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&sender_mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&arp);
    frame
}

/// Internet checksum of `data` starting from the partial sum `initial`.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u32::from(chunk[0]) << 8 | chunk.get(1).map_or(0, |b| u32::from(*b));
        sum += word;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in src.octets().chunks(2).chain(dst.octets().chunks(2)) {
        sum += u32::from(pair[0]) << 8 | u32::from(pair[1]);
    }
    sum + u32::from(proto) + len as u32
}

/// The IPv4/L4 view of a frame the programs returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub ip_checksum_ok: bool,
    pub l4_checksum_ok: bool,
}

/// Parses an Ethernet/IPv4/TCP-or-UDP frame and verifies both checksums.
pub fn parse(frame: &[u8]) -> Parsed {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &ip[ihl..total];
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let l4_checksum_ok = match proto {
        TCP | UDP => checksum(l4, pseudo_header_sum(src_ip, dst_ip, proto, l4.len())) == 0,
        _ => checksum(l4, 0) == 0,
    };
    Parsed {
        src: SocketAddrV4::new(src_ip, sport),
        dst: SocketAddrV4::new(dst_ip, dport),
        proto,
        ip_checksum_ok: checksum(&ip[..ihl], 0) == 0,
        l4_checksum_ok,
    }
}
