//! `bench xdp --reference NAME=PIN`: another balancer's XDP program
//! (`bench::reference`) timed by both methods beside xdp_lb, on the same frames (the
//! first in the same pass; the second behind the same frame restore, through a tail
//! call: `xdp_tail_timed`), so the two are compared side by side on one host instead
//! of against figures taken on another.

use std::collections::BTreeMap;

use super::{
    CONNECTION_TARGET_SHARE, KATRAN, Nets, connection_by_construction, connection_like_for_like,
};

/// The side-by-side table: each case's net ns for the reference and for xdp_lb in
/// each mode, xdp_lb's share of the reference's cost and its verdict; then a whole
/// connection, built for each as the issue built Katran's (the reference's SYN
/// writes its table; xdp_lb's handshake ACK does, so its like-for-like row is used).
pub fn report(name: &str, nets: &Nets, opened: &Nets) {
    let net =
        |rows: &Nets, case: &str, who: &str| rows.get(format!("{case}, {who}").as_str()).copied();
    println!();
    println!(
        "Measured side by side in this run (issue #13): `{name}`, a program loaded and \
         pinned outside this repository (`--reference`), timed in the pass above on the same \
         frames, net of the same harness, each case from its faster load. \"÷ {name}\" is \
         xdp_lb's net cost over {name}'s; the target is at most half."
    );
    // Judged in both modes, as the issue #13 table above judges them.
    table(name, KATRAN.iter().map(|k| k.0), |case, who| net(nets, case, who));
    let theirs = connection_by_construction(
        net(nets, "TCP SYN v4", name),
        net(nets, "TCP ACK v4 (table hit)", name),
    );
    let ours = |mode: &str| {
        connection_like_for_like(
            net(opened, super::OPENING_SYN, mode),
            net(opened, super::INSERTING_ACK, mode),
            net(nets, "TCP ACK v4 (table hit)", mode),
        )
    };
    let (dsr, dsr_ratio) = cell(ours("dsr"), theirs, Some(CONNECTION_TARGET_SHARE));
    let (ipip, ipip_ratio) = cell(ours("ipip"), theirs, Some(CONNECTION_TARGET_SHARE));
    let theirs = theirs.map_or("–".into(), |t| format!("{t:.0}"));
    println!(
        "| new TCP connection ({name}: SYN + 11 table hits; xdplb: opening SYN + inserting ACK \
         + 10 table hits) | {theirs} | {dsr} | {dsr_ratio} | {ipip} | {ipip_ratio} |"
    );
}

/// The second method's side-by-side table: each case (`cases`, as the rows of
/// `nets` name them, net ns per unit: a whole connection per connection) for the
/// pinned program, which ran behind `xdp_tail_timed` paired with the same tail call
/// to an empty program, and for xdp_lb in each mode.
pub fn report_timed<'a>(
    name: &str,
    nets: &BTreeMap<String, f64>,
    cases: impl Iterator<Item = &'a str>,
) {
    println!();
    println!(
        "Measured side by side by this method (issue #13): `{name}`, pinned outside this \
         repository (`--reference`), run behind the same frame restore through a tail call \
         (`xdp_tail_timed`), paired with the same restore and tail call to an empty program, \
         each case from its faster load. \"÷ {name}\" is xdp_lb's net cost over {name}'s; the \
         targets are at most half, and the whole connection's is judged by this method. This \
         method sends new flows at millions a second: a program that stops writing its table \
         above a rate of new flows (Katran's guard, 125 000 a second on a CPU unless built \
         with a higher MAX_CONN_RATE) then times its flood mode, not a new connection."
    );
    table(name, cases, |case, who| nets.get(&format!("{case}, {who}")).copied());
}

/// The side-by-side rows of `cases`: the reference's net ns (`net(case, name)`),
/// xdp_lb's in each mode, its share of the reference's and the verdict (`share_of`).
fn table<'a>(
    name: &str,
    cases: impl Iterator<Item = &'a str>,
    net: impl Fn(&str, &str) -> Option<f64>,
) {
    println!();
    println!("| case | {name} ns | xdplb dsr ns | ÷ {name} | xdplb ipip ns | ÷ {name} |");
    println!("|---|---:|---:|---:|---:|---:|");
    for case in cases {
        let (theirs, share) = (net(case, name), share_of(case));
        let (dsr, dsr_ratio) = cell(net(case, "dsr"), theirs, share);
        let (ipip, ipip_ratio) = cell(net(case, "ipip"), theirs, share);
        let theirs = theirs.map_or("–".into(), |t| format!("{t:.1}"));
        println!("| {case} | {theirs} | {dsr} | {dsr_ratio} | {ipip} | {ipip_ratio} |");
    }
}

/// Issue #13's share of the reference's cost for a case of either method: a whole
/// connection's, or the first-method case's its name begins with (`KATRAN`); none
/// for non-VIP traffic.
fn share_of(case: &str) -> Option<f64> {
    if case.starts_with("new TCP") {
        return Some(CONNECTION_TARGET_SHARE);
    }
    KATRAN
        .iter()
        .find(|(c, ..)| case.starts_with(c))
        .and_then(|(_, katran, t)| t.map(|t| t / katran))
}

/// xdp_lb's net ns and its share of the reference's, with the verdict against `share`.
fn cell(ours: Option<f64>, theirs: Option<f64>, share: Option<f64>) -> (String, String) {
    let (Some(o), Some(t)) = (ours, theirs) else { return ("–".into(), "–".into()) };
    let ratio = o / t;
    let verdict = match share {
        Some(s) if ratio <= s => format!(" (≤ {s}: met)"),
        Some(s) => format!(" (≤ {s}: **missed**)"),
        None => String::new(),
    };
    (format!("{o:.1}"), format!("{ratio:.2}{verdict}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_methods_cases_are_judged_at_half_of_the_reference_but_non_vip_traffic() {
        for case in [
            "TCP SYN v4",
            "TCP SYN v4, a new flow each",
            "TCP SYN v4, the same flow each",
            "TCP SYN v6, a new flow each",
            "TCP ACK v4 (table hit)",
            "UDP v4 (table hit)",
            "new TCP v4 connection: SYN + ACK + 10 hits",
        ] {
            assert_eq!(share_of(case), Some(0.5), "{case}");
        }
        assert_eq!(share_of("non-VIP pass"), None);
    }
}
