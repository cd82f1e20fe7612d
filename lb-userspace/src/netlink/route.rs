//! Host routes to the VIPs in a routing table of our own (`RTM_NEWROUTE`,
//! `RTM_DELROUTE`, `RTM_GETROUTE`): what a BGP daemon on the balancer exports.
//! They are blackhole routes: nothing routes by that table, they only say "this
//! balancer serves this VIP". Ours carry protocol [`ROUTE_PROTOCOL`], so routes
//! that someone else put in the table are never touched.

use std::net::IpAddr;

use super::{AF_INET, AF_INET6, NLM_F_ACK, NLM_F_DUMP, Request, attributes, exchange, is_errno};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
/// `struct rtmsg`: family, dst_len, src_len, tos, table, protocol, scope, type (u8 each), flags u32.
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_TABLE: u16 = 15;
const RTN_BLACKHOLE: u8 = 6;
const RT_SCOPE_UNIVERSE: u8 = 0;
/// `rtm_table` of a table whose number only fits `RTA_TABLE`.
const RT_TABLE_COMPAT: u8 = 252;

/// The routing protocol number on xdplb's routes (`ip route ... proto 250`; unused
/// by the protocols in iproute2's `rt_protos`). BIRD shows it as `krt_source`.
pub const ROUTE_PROTOCOL: u8 = 250;

fn family(addr: IpAddr) -> (u8, u8) {
    match addr {
        IpAddr::V4(_) => (AF_INET, 32),
        IpAddr::V6(_) => (AF_INET6, 128),
    }
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn rtmsg(family: u8, dst_len: u8, table: u32, kind: u8) -> [u8; RTMSG_LEN] {
    let compat = u8::try_from(table).unwrap_or(RT_TABLE_COMPAT);
    [family, dst_len, 0, 0, compat, ROUTE_PROTOCOL, RT_SCOPE_UNIVERSE, kind, 0, 0, 0, 0]
}

/// The request that adds (or replaces) the blackhole host route to `addr` in `table`.
fn add_request(table: u32, addr: IpAddr, seq: u32) -> Request {
    let (family, len) = family(addr);
    Request::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq)
        .header(&rtmsg(family, len, table, RTN_BLACKHOLE))
        .attr(RTA_DST, &octets(addr))
        .attr(RTA_TABLE, &table.to_ne_bytes())
}

fn delete_request(table: u32, addr: IpAddr, seq: u32) -> Request {
    let (family, len) = family(addr);
    Request::new(RTM_DELROUTE, NLM_F_ACK, seq)
        .header(&rtmsg(family, len, table, RTN_BLACKHOLE))
        .attr(RTA_DST, &octets(addr))
        .attr(RTA_TABLE, &table.to_ne_bytes())
}

/// The destination of an `RTM_NEWROUTE` payload if it is one of ours in `table`:
/// a blackhole host route with protocol [`ROUTE_PROTOCOL`].
fn parse_ours(payload: &[u8], table: u32) -> Option<IpAddr> {
    let header = payload.get(..RTMSG_LEN)?;
    let (family, dst_len, compat, protocol, kind) =
        (header[0], header[1], header[4], header[5], header[7]);
    if protocol != ROUTE_PROTOCOL || kind != RTN_BLACKHOLE {
        return None;
    }
    let mut in_table = u32::from(compat);
    let mut dst = None;
    for (attr, data) in attributes(payload, RTMSG_LEN) {
        match attr {
            RTA_TABLE => in_table = super::u32_at(data, 0)?,
            RTA_DST => dst = super::neigh::ip_from(family, data),
            _ => {}
        }
    }
    let dst = dst?;
    (in_table == table && dst_len == self::family(dst).1).then_some(dst)
}

/// Adds the blackhole host route to `addr` in `table` (replacing one that is there).
pub fn add_route(table: u32, addr: IpAddr) -> anyhow::Result<()> {
    exchange(add_request(table, addr, 1), 1, "route add")
        .map(drop)
        .map_err(|e| e.context(format!("adding the route to {addr} in table {table}")))
}

/// Deletes our host route to `addr` from `table`; a route already gone is fine.
pub fn delete_route(table: u32, addr: IpAddr) -> anyhow::Result<()> {
    match exchange(delete_request(table, addr, 1), 1, "route delete") {
        Ok(_) => Ok(()),
        Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
        Err(e) => Err(e.context(format!("deleting the route to {addr} from table {table}"))),
    }
}

/// The destinations of our routes in `table`, both families.
pub fn dump_routes(table: u32) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        let mut header = [0u8; RTMSG_LEN];
        header[0] = family;
        let request = Request::new(RTM_GETROUTE, NLM_F_DUMP, 1).header(&header);
        for (kind, payload) in exchange(request, 1, "route dump")? {
            if kind == RTM_NEWROUTE {
                out.extend(parse_ours(&payload, table));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{super::tests::attr, *};

    fn route(family: u8, dst_len: u8, table: u8, protocol: u8, kind: u8, attrs: &[u8]) -> Vec<u8> {
        let mut p = vec![family, dst_len, 0, 0, table, protocol, 0, kind, 0, 0, 0, 0];
        p.extend_from_slice(attrs);
        p
    }

    #[test]
    fn an_add_is_a_blackhole_host_route_in_our_table_with_our_protocol() {
        let req = add_request(100, "10.99.100.1".parse().expect("ip"), 5).bytes();
        let payload = &req[16..];
        assert_eq!(&payload[..8], &[AF_INET, 32, 0, 0, 100, ROUTE_PROTOCOL, 0, RTN_BLACKHOLE]);
        assert_eq!(parse_ours(payload, 100), Some("10.99.100.1".parse().expect("ip")));
        let big = add_request(70_000, "fd99:100::1".parse().expect("ip"), 5).bytes();
        assert_eq!(&big[16..22], &[AF_INET6, 128, 0, 0, RT_TABLE_COMPAT, ROUTE_PROTOCOL]);
        assert_eq!(parse_ours(&big[16..], 70_000), Some("fd99:100::1".parse().expect("ip")));
    }

    #[test]
    fn only_our_host_routes_in_the_table_are_ours() {
        let dst = attr(RTA_DST, &[10, 99, 100, 1]);
        let ours = route(AF_INET, 32, 100, ROUTE_PROTOCOL, RTN_BLACKHOLE, &dst);
        assert_eq!(parse_ours(&ours, 100), Some("10.99.100.1".parse().expect("ip")));
        assert_eq!(parse_ours(&ours, 101), None, "another table");
        let bird = route(AF_INET, 32, 100, 12, RTN_BLACKHOLE, &dst);
        assert_eq!(parse_ours(&bird, 100), None, "another protocol's route");
        let unicast = route(AF_INET, 32, 100, ROUTE_PROTOCOL, 1, &dst);
        assert_eq!(parse_ours(&unicast, 100), None, "not a blackhole");
        let prefix = route(AF_INET, 24, 100, ROUTE_PROTOCOL, RTN_BLACKHOLE, &dst);
        assert_eq!(parse_ours(&prefix, 100), None, "not a host route");
        assert_eq!(parse_ours(&[AF_INET, 32], 100), None, "too short");
    }
}
