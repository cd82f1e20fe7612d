//! Interfaces as the kernel sees them (`RTM_GETLINK`): up or down, and which
//! XDP program runs on each in which mode. The balancer's own health asks this
//! of its interface, not its own memory of what it attached; a restart asks it
//! of every interface, to find where the pinned link's program runs.

use super::{AF_UNSPEC, NLM_F_ACK, NLM_F_DUMP, Request, attributes, exchange, u32_at};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
/// `struct ifinfomsg`: family u8, pad u8, type u16, index i32, flags u32, change u32.
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;

/// The XDP program ids attached to an interface, per mode (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPrograms {
    /// Native (driver) mode.
    pub driver: u32,
    /// Generic (skb) mode.
    pub skb: u32,
    /// Offloaded to the NIC.
    pub hw: u32,
}

/// What the kernel says of one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Administratively up (`ip link set up`).
    pub up: bool,
    /// The lower layer is up: carrier on a NIC, the peer up on a veth.
    pub lower_up: bool,
    pub xdp: XdpPrograms,
}

/// An interface with an XDP program attached, and in which mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpAttached {
    pub ifindex: u32,
    pub name: String,
    /// The program attached in driver (native) mode.
    pub driver: Option<u32>,
    /// The program attached in generic (skb) mode.
    pub skb: Option<u32>,
}

fn request(index: u32, seq: u32) -> Request {
    let mut ifinfomsg = [0u8; IFINFOMSG_LEN];
    ifinfomsg[0] = AF_UNSPEC;
    ifinfomsg[4..8].copy_from_slice(&index.to_ne_bytes());
    Request::new(RTM_GETLINK, NLM_F_ACK, seq).header(&ifinfomsg)
}

/// Parses an `RTM_NEWLINK` payload: the interface's index, name and state;
/// `None` for a payload too short for `ifinfomsg`.
fn parse_any(payload: &[u8]) -> Option<(u32, String, LinkState)> {
    payload.get(..IFINFOMSG_LEN)?;
    let index = u32_at(payload, 4)?;
    let flags = u32_at(payload, 8)?;
    let mut state = LinkState {
        up: flags & IFF_UP != 0,
        lower_up: flags & IFF_LOWER_UP != 0,
        ..LinkState::default()
    };
    let mut name = String::new();
    for (kind, data) in attributes(payload, IFINFOMSG_LEN) {
        match kind {
            IFLA_IFNAME => {
                let bytes = data.split(|b| *b == 0).next().unwrap_or_default();
                name = String::from_utf8_lossy(bytes).into_owned();
            }
            IFLA_XDP => {
                for (kind, data) in attributes(data, 0) {
                    let id = u32_at(data, 0).unwrap_or(0);
                    match kind {
                        IFLA_XDP_DRV_PROG_ID => state.xdp.driver = id,
                        IFLA_XDP_SKB_PROG_ID => state.xdp.skb = id,
                        IFLA_XDP_HW_PROG_ID => state.xdp.hw = id,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((index, name, state))
}

/// Parses an `RTM_NEWLINK` payload for interface `index`; `None` for another
/// interface or a payload too short for `ifinfomsg`.
fn parse(payload: &[u8], index: u32) -> Option<LinkState> {
    parse_any(payload).filter(|(i, _, _)| *i == index).map(|(_, _, state)| state)
}

/// Parses an `RTM_NEWLINK` payload of a dump: the interface, if it has an XDP
/// program (driver or generic mode).
fn parse_attached(payload: &[u8]) -> Option<XdpAttached> {
    let (ifindex, name, LinkState { xdp, .. }) = parse_any(payload)?;
    let id = |id: u32| (id != 0).then_some(id);
    let link = XdpAttached { ifindex, name, driver: id(xdp.driver), skb: id(xdp.skb) };
    (link.driver.is_some() || link.skb.is_some()).then_some(link)
}

/// The state of the interface with index `index` in this network namespace.
pub fn link_state(index: u32) -> anyhow::Result<LinkState> {
    let seq = 1;
    let answers = exchange(request(index, seq), seq, "link query")?;
    answers
        .iter()
        .filter(|(kind, _)| *kind == RTM_NEWLINK)
        .find_map(|(_, payload)| parse(payload, index))
        .ok_or_else(|| anyhow::anyhow!("the kernel did not describe interface {index}"))
}

/// Every interface of this network namespace that has an XDP program attached
/// (`RTM_GETLINK` dump).
pub fn xdp_attached() -> anyhow::Result<Vec<XdpAttached>> {
    let seq = 1;
    let request = Request::new(RTM_GETLINK, NLM_F_DUMP, seq).header(&[0u8; IFINFOMSG_LEN]);
    let answers = exchange(request, seq, "link dump")?;
    Ok(answers
        .iter()
        .filter(|(kind, _)| *kind == RTM_NEWLINK)
        .filter_map(|(_, payload)| parse_attached(payload))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{super::tests::attr, *};

    fn ifinfomsg(index: u32, flags: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0, 0, 1, 0];
        p.extend_from_slice(&index.to_ne_bytes());
        p.extend_from_slice(&flags.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        for a in attrs {
            p.extend_from_slice(a);
        }
        p
    }

    fn xdp(nested: &[Vec<u8>]) -> Vec<u8> {
        // NLA_F_NESTED set, as the kernel sends it.
        attr(IFLA_XDP | 0x8000, &nested.concat())
    }

    #[test]
    fn the_request_asks_for_one_interface_by_index() {
        let req = request(7, 3).bytes();
        assert_eq!(super::super::u16_at(&req, 4), Some(RTM_GETLINK));
        assert_eq!(u32_at(&req, 16 + 4), Some(7));
    }

    #[test]
    fn flags_and_per_mode_program_ids_are_read() {
        let attached = xdp(&[
            attr(2, &[1]), // IFLA_XDP_ATTACHED: driver
            attr(IFLA_XDP_DRV_PROG_ID, &42u32.to_ne_bytes()),
            attr(4, &42u32.to_ne_bytes()), // IFLA_XDP_PROG_ID
        ]);
        let up =
            parse(&ifinfomsg(3, IFF_UP | IFF_LOWER_UP | 0x40, &[attr(3, b"eth0\0"), attached]), 3);
        assert_eq!(
            up,
            Some(LinkState {
                up: true,
                lower_up: true,
                xdp: XdpPrograms { driver: 42, skb: 0, hw: 0 }
            })
        );
        let generic = xdp(&[attr(IFLA_XDP_SKB_PROG_ID, &9u32.to_ne_bytes())]);
        let down = parse(&ifinfomsg(3, IFF_UP, &[generic]), 3).expect("state");
        assert_eq!((down.up, down.lower_up, down.xdp.skb, down.xdp.driver), (true, false, 9, 0));
    }

    #[test]
    fn another_interface_or_a_short_payload_is_not_an_answer() {
        assert_eq!(parse(&ifinfomsg(4, IFF_UP, &[]), 3), None);
        assert_eq!(parse(&[0; 8], 3), None);
        // No XDP attribute: nothing attached.
        assert_eq!(parse(&ifinfomsg(3, 0, &[]), 3), Some(LinkState::default()));
    }

    #[test]
    fn a_link_dump_names_the_interfaces_with_xdp_and_the_mode_of_each_program() {
        let skb = ifinfomsg(
            3,
            IFF_UP,
            &[
                attr(IFLA_IFNAME, b"eth0\0"),
                xdp(&[attr(2, &[2]), attr(IFLA_XDP_SKB_PROG_ID, &77u32.to_ne_bytes())]),
            ],
        );
        let multi = ifinfomsg(
            4,
            IFF_UP,
            &[
                attr(IFLA_IFNAME, b"eth1\0"),
                xdp(&[
                    attr(2, &[4]), // IFLA_XDP_ATTACHED: several modes
                    attr(IFLA_XDP_DRV_PROG_ID, &8u32.to_ne_bytes()),
                    attr(IFLA_XDP_SKB_PROG_ID, &9u32.to_ne_bytes()),
                ]),
            ],
        );
        let none = ifinfomsg(5, IFF_UP, &[attr(IFLA_IFNAME, b"lo\0"), xdp(&[attr(2, &[0])])]);
        let links: Vec<_> = [skb, multi, none].iter().filter_map(|p| parse_attached(p)).collect();
        assert_eq!(
            links,
            [
                XdpAttached { ifindex: 3, name: "eth0".into(), driver: None, skb: Some(77) },
                XdpAttached { ifindex: 4, name: "eth1".into(), driver: Some(8), skb: Some(9) },
            ]
        );
        assert_eq!(parse_attached(&[0; 4]), None, "too short for ifinfomsg");
    }

    #[test]
    fn the_kernels_link_dump_reads_without_error() {
        xdp_attached().expect("a link dump");
    }
}
