//! The BGP engine: one blackhole host route per VIP address in a kernel routing
//! table of xdplb's own (`ha.route_table`), present while this balancer should
//! carry traffic. BIRD learns the table (`protocol kernel { kernel table N;
//! learn; }`) and exports it to the router over BGP, so deleting a route
//! withdraws the VIP from this balancer within milliseconds. Nothing routes by
//! that table. Only our own routes (protocol `netlink::ROUTE_PROTOCOL`) are
//! ever touched.

use std::{collections::BTreeSet, net::IpAddr};

use super::{Announcement, Engine};
use crate::netlink;

/// Where the routes are kept: the kernel, or a test's fake.
pub trait Routes: Send {
    /// Our routes in `table`.
    fn list(&mut self, table: u32) -> anyhow::Result<Vec<IpAddr>>;
    fn add(&mut self, table: u32, addr: IpAddr) -> anyhow::Result<()>;
    fn delete(&mut self, table: u32, addr: IpAddr) -> anyhow::Result<()>;
}

/// The kernel's routing tables, through rtnetlink.
pub struct Kernel;

impl Routes for Kernel {
    fn list(&mut self, table: u32) -> anyhow::Result<Vec<IpAddr>> {
        netlink::dump_routes(table)
    }
    fn add(&mut self, table: u32, addr: IpAddr) -> anyhow::Result<()> {
        netlink::add_route(table, addr)
    }
    fn delete(&mut self, table: u32, addr: IpAddr) -> anyhow::Result<()> {
        netlink::delete_route(table, addr)
    }
}

pub struct RouteTable {
    table: u32,
    routes: Box<dyn Routes>,
}

impl RouteTable {
    #[must_use]
    pub fn new(table: u32, routes: Box<dyn Routes>) -> Self {
        Self { table, routes }
    }

    /// The table in the kernel.
    #[must_use]
    pub fn kernel(table: u32) -> Self {
        Self::new(table, Box::new(Kernel))
    }
}

impl Engine for RouteTable {
    fn name(&self) -> &'static str {
        "route_table"
    }

    /// Withdrawals first (deleting is what a failing balancer needs most), then
    /// additions; every route is tried even if one fails.
    fn tell(&mut self, announcement: &Announcement) -> anyhow::Result<()> {
        let want: BTreeSet<IpAddr> = match announcement {
            Announcement::Serving(vips) => vips.clone(),
            Announcement::Withdrawn => BTreeSet::new(),
        };
        let have: BTreeSet<IpAddr> = self.routes.list(self.table)?.into_iter().collect();
        let mut first_error = None;
        for addr in have.difference(&want) {
            if let Err(e) = self.routes.delete(self.table, *addr) {
                first_error.get_or_insert(e);
            }
        }
        for addr in want.difference(&have) {
            if let Err(e) = self.routes.add(self.table, *addr) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    /// Tables in memory; `log` records every change; `broken` fails adds of that address.
    #[derive(Clone, Default)]
    struct Fake {
        tables: Arc<Mutex<Vec<(u32, IpAddr)>>>,
        log: Arc<Mutex<Vec<String>>>,
        broken: Option<IpAddr>,
    }

    impl Routes for Fake {
        fn list(&mut self, table: u32) -> anyhow::Result<Vec<IpAddr>> {
            let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(tables.iter().filter(|(t, _)| *t == table).map(|(_, a)| *a).collect())
        }
        fn add(&mut self, table: u32, addr: IpAddr) -> anyhow::Result<()> {
            if self.broken == Some(addr) {
                anyhow::bail!("netlink: invalid argument");
            }
            self.log.lock().unwrap_or_else(PoisonError::into_inner).push(format!("+{addr}"));
            self.tables.lock().unwrap_or_else(PoisonError::into_inner).push((table, addr));
            Ok(())
        }
        fn delete(&mut self, table: u32, addr: IpAddr) -> anyhow::Result<()> {
            self.log.lock().unwrap_or_else(PoisonError::into_inner).push(format!("-{addr}"));
            self.tables
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|r| *r != (table, addr));
            Ok(())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_table_follows_the_announcement_and_is_repaired() {
        let fake = Fake::default();
        // Another table, untouched; a leftover of an earlier run, removed.
        fake.tables.lock().expect("lock").extend([(101, ip("192.0.2.9")), (100, ip("192.0.2.9"))]);
        let mut table = RouteTable::new(100, Box::new(fake.clone()));
        let serving = Announcement::Serving([ip("192.0.2.1"), ip("2001:db8::1")].into());
        table.tell(&serving).expect("announce");
        assert_eq!(*fake.log.lock().expect("lock"), ["-192.0.2.9", "+192.0.2.1", "+2001:db8::1"]);
        // Someone deleted one: the next telling puts it back.
        fake.tables.lock().expect("lock").retain(|(_, a)| *a != ip("192.0.2.1"));
        table.tell(&serving).expect("repair");
        table.tell(&Announcement::Withdrawn).expect("withdraw");
        let left = fake.tables.lock().expect("lock").clone();
        assert_eq!(left, [(101, ip("192.0.2.9"))]);
    }

    #[test]
    fn one_failing_route_does_not_keep_the_others_out() {
        let fake = Fake { broken: Some(ip("192.0.2.1")), ..Fake::default() };
        let mut table = RouteTable::new(100, Box::new(fake.clone()));
        let serving = Announcement::Serving([ip("192.0.2.1"), ip("192.0.2.2")].into());
        let err = table.tell(&serving).expect_err("one add fails");
        assert_eq!(err.to_string(), "netlink: invalid argument");
        assert_eq!(*fake.log.lock().expect("lock"), ["+192.0.2.2"]);
    }
}
