//! `cidr:` labels and CIDR identity label sets.

use ipnet::IpNet;
use model::labels::{Label, Labels};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn ipv4_key_is_the_masked_prefix() {
    assert_eq!(
        Label::cidr(net("10.0.0.0/8")).to_string(),
        "cidr:10.0.0.0/8"
    );
    assert_eq!(
        Label::cidr(net("10.1.2.3/8")).to_string(),
        "cidr:10.0.0.0/8"
    );
    assert_eq!(
        Label::cidr(net("192.168.1.7/32")).to_string(),
        "cidr:192.168.1.7/32"
    );
}

#[test]
fn ipv6_key_replaces_colons_with_dashes() {
    assert_eq!(Label::cidr(net("2001:db8::/32")).key, "2001-db8--0/32");
    assert_eq!(Label::cidr(net("::1/128")).key, "0--1/128");
    assert_eq!(Label::cidr(net("::/0")).key, "0--0/0");
    assert_eq!(
        Label::cidr(net("fd00:1:2:3:4:5:6:7/128")).key,
        "fd00-1-2-3-4-5-6-7/128"
    );
}

#[test]
fn ipv6_text_follows_go_netip() {
    // Go prints IPv4-mapped addresses with a dotted quad and every other address in hex.
    assert_eq!(
        Label::cidr(net("::ffff:10.0.0.1/128")).key,
        "0--ffff-10.0.0.1/128"
    );
    assert_eq!(Label::cidr(net("::1.2.3.4/128")).key, "0--102-304/128");
    assert_eq!(Label::cidr(net("fe80::1:0/112")).key, "fe80--1-0/112");
}

#[test]
fn cidr_prefix_reads_the_key_back() {
    for prefix in [
        "10.0.0.0/8",
        "2001:db8::/32",
        "::/0",
        "::1/128",
        "0.0.0.0/0",
    ] {
        let label = Label::cidr(net(prefix));
        assert_eq!(label.cidr_prefix(), Some(net(prefix)), "{label}");
        assert_eq!(label.validate(), Ok(()));
    }
    assert_eq!(Label::host().cidr_prefix(), None);
}

#[test]
fn cidr_identity_labels_single_stack() {
    let labels = Labels::for_cidr(net("10.0.0.0/8"), false);
    assert_eq!(
        labels.to_kvstore_string(),
        "cidr:10.0.0.0/8=;reserved:world=;"
    );
}

#[test]
fn cidr_identity_labels_dual_stack_pick_the_family_world() {
    let v4 = Labels::for_cidr(net("10.0.0.0/8"), true);
    assert!(v4.contains(&Label::world_ipv4()));
    assert!(!v4.contains(&Label::world()));
    let v6 = Labels::for_cidr(net("2001:db8::/32"), true);
    assert!(v6.contains(&Label::world_ipv6()));
    assert!(v6.contains(&Label::cidr(net("2001:db8::/32"))));
}

#[test]
fn zero_length_prefix_is_only_world() {
    let labels = Labels::for_cidr(net("0.0.0.0/0"), false);
    assert_eq!(labels.len(), 1);
    assert!(labels.contains(&Label::world()));
}
