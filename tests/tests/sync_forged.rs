//! Peer sync (#15) against datagrams that must change nothing, with a real
//! daemon: xdplb runs in the lab's lb namespace with `sync:` and one configured
//! peer, a fake peer in the client namespace. Forged (another key), truncated,
//! oversized, malformed, other-version, expired and unknown-sender datagrams are
//! each counted by reason and install nothing; the genuine snapshot then
//! installs its entry, and the same bytes again are a counted replay.

#![allow(clippy::unwrap_used, reason = "test")]

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use lb_userspace::{
    config::seed,
    sync::{
        peers::Sender,
        wire::{Entry, mac_key},
    },
};
use xdplb_tests::{
    balancer::sync_entry,
    daemon::binary,
    lab::{self, CLIENT4, LB4, Mode, NS_CLIENT, in_netns},
    packet::Flow,
    privilege::have_root,
    rig::{Checks, Rig, config_text, wait_until},
};

const KEY: [u8; 32] = [0x5a; 32];
const LISTEN: u16 = 4790;
const PEER_PORT: u16 = 4791;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An exception the daemon can map: a client's flow to web4 on waf1.
fn entry() -> Entry {
    let flow = Flow::tcp(&CLIENT4.to_string(), 40_000, &lab::VIP4.to_string(), lab::HTTP_PORT);
    sync_entry(&flow, lab::waf4(1).into())
}

#[test]
fn forged_replayed_and_malformed_sync_datagrams_change_nothing() {
    let what = "peer sync: forged datagrams";
    if !have_root(what) {
        return;
    }
    binary().expect("the xdplb binary: `cargo build -p lb-userspace --bin xdplb`");
    // Not under the lab's directory: bringing the lab up empties it.
    let key_file =
        std::env::temp_dir().join(format!("xdplb-sync-forged-{}.key", std::process::id()));
    std::fs::write(&key_file, seed::hex(KEY.into_iter())).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = config_text(Mode::Dsr, 2, &Checks::default(), &[]);
    writeln!(
        text,
        "sync:\n  listen: \"{LB4}:{LISTEN}\"\n  peers: [ \"{CLIENT4}:{PEER_PORT}\" ]\n  key_file: {}",
        key_file.display()
    )
    .unwrap();
    let rig = Rig::up_with(Mode::Dsr, 2, &text).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    let d = &rig.daemon;
    // Counts as integers (the metrics are whole numbers); -1 when unreadable.
    let read =
        |name: &str, labels: &[(&str, &str)]| d.metric(name, labels).map_or(-1, |v| v as i64);
    let rejected = |reason: &str| read("xdplb_sync_messages_rejected_total", &[("reason", reason)]);
    let installed = || read("xdplb_sync_exceptions", &[("origin", "peer")]);
    let to: SocketAddr = (LB4, LISTEN).into();
    let send = |port: u16, datagrams: Vec<Vec<u8>>| {
        in_netns(Some(NS_CLIENT), move || {
            let s = UdpSocket::bind((CLIENT4, port))?;
            for d in datagrams {
                s.send_to(&d, to)?;
            }
            Ok(())
        })
        .unwrap();
    };
    let key = mac_key(&KEY);
    let mut peer = Sender::new(0x5eed);
    let (h, e) = peer.snapshot(&[entry()]).remove(0);
    let forged = peer.seal(&mac_key(&[0x11; 32]), &h, &e, now_ms());
    let genuine = peer.seal(&key, &h, &e, now_ms());
    let mut other_version = genuine.clone();
    other_version[4] = 2;
    let stale = peer.seal(&key, &h, &e, now_ms() - 600_000);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("bad_mac", forged),
        ("bad_mac", genuine[..genuine.len() - 1].to_vec()),
        ("oversized", vec![0; 1500]),
        ("malformed", b"XLBS but not much more".to_vec()),
        ("version", other_version),
        ("expired", stale),
    ];
    send(PEER_PORT + 1, vec![genuine.clone()]);
    send(PEER_PORT, bad.iter().map(|(_, d)| d.clone()).collect());
    for reason in ["bad_mac", "oversized", "malformed", "version", "expired", "unknown_peer"] {
        let want = i64::try_from(bad.iter().filter(|(r, _)| *r == reason).count().max(1)).unwrap();
        wait_until(Duration::from_secs(5), || Ok(rejected(reason) >= want))
            .unwrap_or_else(|e| panic!("{reason} not counted ({}): {e:#}", rejected(reason)));
    }
    assert_eq!(installed(), 0, "nothing installed from bad datagrams");
    assert_eq!(rejected("replay"), 0);

    // The genuine datagram from the peer installs its entry; again, it is a replay.
    send(PEER_PORT, vec![genuine.clone()]);
    wait_until(Duration::from_secs(5), || Ok(installed() == 1))
        .unwrap_or_else(|e| panic!("the genuine entry was not installed: {e:#}\n{}", d.log_text()));
    send(PEER_PORT, vec![genuine]);
    wait_until(Duration::from_secs(5), || Ok(rejected("replay") >= 1)).unwrap();
    assert_eq!(installed(), 1);
    let status = d.status().unwrap();
    assert!(
        status.contains("peers:") && status.contains(&format!("{CLIENT4}:{PEER_PORT}")),
        "{status}"
    );
    drop(rig);
    let _: Result<()> = std::fs::remove_file(&key_file).map_err(Into::into);
}
