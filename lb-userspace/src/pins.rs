//! What a balancer's pin directory holds (`pin_dir/maps`), checked before any of
//! it is reused: the maps of `xdp-lb` that outlive a run, plus two the controller
//! pins beside them (`LAYOUT`, the layout version of the set; `BACKEND_FLAGS`, its
//! view of each backend). aya reuses a pinned map as it finds it, so a map of
//! another size or layout (left by another xdplb version, or a config that sizes
//! a map differently) would be misread: every pin's type, key and value sizes,
//! entries and flags are compared with what this build expects, and a set that
//! is only partly there is never mixed with fresh maps.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, Map, MapData, MapInfo};
use lb_common::{flow_table::WAYS, limits::MAX_BACKENDS, map_names, pinned::LAYOUT_VERSION};

use crate::objects;

/// Maps of the `xdp-lb` object whose contents must survive a restart (SCRATCH
/// and TOO_BIG_RATE are per-packet or per-CPU scratch). The clock goes with the
/// IPv4 table whose ways it stamps.
pub const OBJECT_MAPS: &[&str] = &[
    map_names::CONFIG,
    map_names::VIPS,
    map_names::VIP_ADDRS,
    map_names::VIP_FILTER,
    map_names::RINGS,
    map_names::BACKENDS,
    map_names::FLOWS4,
    map_names::CONNS,
    map_names::CONN_EPOCH,
    map_names::STATS,
    map_names::VIP_STATS,
    map_names::BACKEND_STATS,
];

/// `BPF_MAP_TYPE_ARRAY`, the type of the controller's own pinned maps.
const ARRAY: u32 = 2;

/// What the kernel says of a map, and what a pin must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// Where things are pinned under the pin directory.
#[must_use]
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

/// The pin of map `name`.
#[must_use]
pub fn map_path(pin_dir: &Path, name: &str) -> PathBuf {
    maps_dir(pin_dir).join(name)
}

/// Every pinned map and the shape this build gives it: the object's maps as the
/// ELF file defines them (with `max_entries` overrides, e.g. a configured
/// connection-table size), then `BACKEND_FLAGS` and `LAYOUT`.
pub fn expected(max_entries: &[(&str, u32)]) -> Result<Vec<(&'static str, Shape)>> {
    let object =
        aya_obj::Object::parse(objects::XDP_LB).map_err(|e| anyhow!("parsing xdp-lb: {e}"))?;
    let mut out = Vec::new();
    for name in OBJECT_MAPS {
        let m = object.maps.get(*name).ok_or_else(|| anyhow!("xdp-lb has no map {name}"))?;
        let entries = max_entries.iter().find(|(n, _)| n == name).map(|(_, e)| *e);
        out.push((
            *name,
            Shape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: entries.unwrap_or_else(|| m.max_entries()),
                flags: m.map_flags(),
            },
        ));
    }
    let array =
        |max_entries| Shape { map_type: ARRAY, key_size: 4, value_size: 4, max_entries, flags: 0 };
    out.push((map_names::BACKEND_FLAGS, array(MAX_BACKENDS)));
    out.push((map_names::LAYOUT, array(1)));
    Ok(out)
}

/// What to do with the pin directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Survey {
    /// Nothing pinned: create every map.
    Fresh,
    /// Every map pinned, compatible: adopt them. `version` 1 is a set pinned
    /// before `LAYOUT` and `BACKEND_FLAGS` existed (those two are created).
    Adopt { version: u32 },
}

/// Decides from what was found (each pinned map's shape, and the `LAYOUT`
/// value) whether the pins are fresh, adoptable, or refused (`Err`: what is
/// wrong and what to do). No I/O.
pub fn decide(
    dir: &Path,
    expected: &[(&str, Shape)],
    found: &BTreeMap<String, Shape>,
    layout: Option<u32>,
) -> Result<Survey, String> {
    let start_fresh = format!(
        "run `xdplb detach --pin-path {}` (it detaches XDP and removes the pins: \
         established flows are dropped), then start again",
        dir.display()
    );
    if found.is_empty() {
        return Ok(Survey::Fresh);
    }
    let other_version = |version| {
        format!(
            "the maps pinned in {} have layout version {version}, this xdplb uses version \
             {LAYOUT_VERSION}: run the xdplb version that pinned them, or {start_fresh}",
            maps_dir(dir).display()
        )
    };
    // First: another version's set may lack a map this one has (version 6 added
    // CONNS4, 7 FLOW_CACHE and CONN_EPOCH, 9 FLOWS4), which is no partial set.
    if let Some(version) = layout.filter(|v| *v != LAYOUT_VERSION) {
        return Err(other_version(version));
    }
    let missing: Vec<&str> =
        expected.iter().map(|(n, _)| *n).filter(|n| !found.contains_key(*n)).collect();
    // Version 1 had neither of the controller's two maps; anything else missing
    // is a partial set.
    let version_1 = missing == [map_names::BACKEND_FLAGS, map_names::LAYOUT];
    if !missing.is_empty() && !version_1 {
        return Err(format!(
            "{} holds only part of a balancer's pinned maps (missing: {}; left by an \
             interrupted start or detach?); they cannot be mixed with new ones: {start_fresh}",
            maps_dir(dir).display(),
            missing.join(", ")
        ));
    }
    let version = if missing.is_empty() { layout.unwrap_or(0) } else { 1 };
    if version != LAYOUT_VERSION && version != 1 {
        return Err(other_version(version));
    }
    for (name, want) in expected {
        let Some(have) = found.get(*name) else { continue };
        let resized = Shape { max_entries: want.max_entries, ..*have } == *want;
        let v4 = *name == map_names::FLOWS4;
        if (v4 || *name == map_names::CONNS) && have != want && resized {
            // FLOWS4 is sized by conn_table_size (in sets), CONNS by conn_table_size_v6.
            let (key, per, rounding) = if v4 {
                ("conn_table_size", WAYS as u32, "a power of two sets of four")
            } else {
                (
                    "conn_table_size_v6 (default: a quarter of conn_table_size)",
                    1,
                    "a multiple of the CPUs",
                )
            };
            return Err(format!(
                "the pinned connection table {} holds {} entries, {key} asks for {} (rounded up \
                 to {rounding}): a table cannot be resized in place; set {key} back to keep the \
                 established flows, or {start_fresh}",
                map_path(dir, name).display(),
                have.max_entries.saturating_mul(per),
                want.max_entries.saturating_mul(per)
            ));
        }
        if have != want {
            return Err(format!(
                "pinned map {} does not match this xdplb ({have}; expected {want}): it was \
                 created by another xdplb version or with other sizes; {start_fresh}",
                map_path(dir, name).display()
            ));
        }
    }
    Ok(Survey::Adopt { version })
}

/// Looks at the pins under `dir` and decides (see [`decide`]).
pub fn survey(dir: &Path, max_entries: &[(&str, u32)]) -> Result<Survey> {
    let expected = expected(max_entries)?;
    let mut found = BTreeMap::new();
    for (name, _) in &expected {
        let path = map_path(dir, name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        let map_type = info.map_type().map_or(u32::MAX, |t| t as u32);
        let shape = Shape {
            map_type,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        found.insert((*name).to_owned(), shape);
    }
    let layout = match found.get(map_names::LAYOUT) {
        Some(shape) if shape.value_size == 4 => Some(read_layout(dir)?),
        _ => None,
    };
    decide(dir, &expected, &found, layout).map_err(|e| anyhow!(e))
}

fn open_array(dir: &Path, name: &str) -> Result<Array<MapData, u32>> {
    let path = map_path(dir, name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    Array::try_from(Map::Array(data)).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn read_layout(dir: &Path) -> Result<u32> {
    open_array(dir, map_names::LAYOUT)?.get(&0, 0).context("reading the pinned LAYOUT")
}

/// Opens the pinned `BACKEND_FLAGS`, or creates and pins it.
pub fn backend_flags(dir: &Path) -> Result<Array<MapData, u32>> {
    if map_path(dir, map_names::BACKEND_FLAGS).exists() {
        return open_array(dir, map_names::BACKEND_FLAGS);
    }
    let map = crate::maps::backend_flags_map()?;
    pin(map, dir, map_names::BACKEND_FLAGS)
}

/// Records this build's layout version in the pinned `LAYOUT` (created if
/// missing). Done last, right after every other map is pinned: a set without
/// it is complete from version 1, or left by a start interrupted in the
/// microseconds between (refused as partial when `BACKEND_FLAGS` made it).
pub fn write_layout(dir: &Path) -> Result<()> {
    let mut map = if map_path(dir, map_names::LAYOUT).exists() {
        open_array(dir, map_names::LAYOUT)?
    } else {
        let map =
            Array::<MapData, u32>::create(1, 0).map_err(|e| anyhow!("creating LAYOUT: {e}"))?;
        // Written before it is pinned: no reader ever sees it without a version.
        let mut map = map;
        map.set(0, LAYOUT_VERSION, 0).context("writing LAYOUT")?;
        return pin(map, dir, map_names::LAYOUT).map(drop);
    };
    map.set(0, LAYOUT_VERSION, 0).context("writing LAYOUT")
}

/// Pins `map` as `name` and opens the pin (pinning consumes the handle).
fn pin(map: Array<MapData, u32>, dir: &Path, name: &str) -> Result<Array<MapData, u32>> {
    let path = map_path(dir, name);
    if let Err(e) = map.pin(&path) {
        bail!("pinning {name} at {}: {e}", path.display());
    }
    open_array(dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> &'static Path {
        Path::new("/sys/fs/bpf/xdplb")
    }

    fn all(expected: &[(&str, Shape)]) -> BTreeMap<String, Shape> {
        expected.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect()
    }

    #[test]
    fn the_object_maps_and_the_controllers_two_are_expected_with_the_objects_sizes() {
        let e = expected(&[(map_names::CONNS, 8192)]).unwrap();
        let names: Vec<&str> = e.iter().map(|(n, _)| *n).collect();
        assert_eq!(&names[..OBJECT_MAPS.len()], OBJECT_MAPS);
        assert_eq!(&names[OBJECT_MAPS.len()..], [map_names::BACKEND_FLAGS, map_names::LAYOUT]);
        let shape = |name| e.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(shape(map_names::CONNS).max_entries, 8192, "overridden");
        assert_eq!(shape(map_names::BACKENDS).value_size as usize, size_of::<lb_common::Backend>());
        assert_eq!(shape(map_names::BACKENDS).max_entries, MAX_BACKENDS);
    }

    #[test]
    fn the_layout_version_names_these_layouts() {
        // Changing a pinned layout fails here until LAYOUT_VERSION is bumped with it
        // (and this list): an older controller must refuse the pins, not misread them.
        use lb_common::{
            Backend, BackendStats, ConnValue, Counter, FlowKey, FlowKey4, FlowSet, LbConfig,
            SynSlot, VipKey, VipMeta,
        };
        let sizes = [
            size_of::<LbConfig>(),
            Counter::COUNT as usize,
            size_of::<Backend>(),
            size_of::<FlowKey4>(),
            size_of::<FlowKey>(),
            size_of::<ConnValue>(),
            size_of::<SynSlot>(),
            size_of::<BackendStats>(),
            size_of::<VipKey>(),
            size_of::<VipMeta>(),
            size_of::<FlowSet>(),
        ];
        assert_eq!((LAYOUT_VERSION, sizes), (9, [96, 24, 32, 16, 40, 8, 16, 56, 20, 8, 128]));
    }

    #[test]
    fn nothing_pinned_is_fresh_and_a_complete_compatible_set_is_adopted() {
        let e = expected(&[]).unwrap();
        assert_eq!(decide(dir(), &e, &BTreeMap::new(), None), Ok(Survey::Fresh));
        assert_eq!(
            decide(dir(), &e, &all(&e), Some(LAYOUT_VERSION)),
            Ok(Survey::Adopt { version: LAYOUT_VERSION })
        );
    }

    #[test]
    fn a_set_from_before_layout_versions_is_adopted_as_version_1() {
        let e = expected(&[]).unwrap();
        let mut found = all(&e);
        found.remove(map_names::LAYOUT);
        found.remove(map_names::BACKEND_FLAGS);
        assert_eq!(decide(dir(), &e, &found, None), Ok(Survey::Adopt { version: 1 }));
    }

    #[test]
    fn a_partial_set_is_refused_naming_what_is_missing_and_xdplb_detach() {
        let e = expected(&[]).unwrap();
        let mut found = all(&e);
        found.remove(map_names::RINGS);
        found.remove(map_names::CONNS);
        let err = decide(dir(), &e, &found, Some(LAYOUT_VERSION)).unwrap_err();
        assert!(err.contains("missing: RINGS, CONNS"), "{err}");
        assert!(err.contains("xdplb detach --pin-path /sys/fs/bpf/xdplb"), "{err}");
        // Flags without a layout version is no complete set of any version either.
        let mut found = all(&e);
        found.remove(map_names::LAYOUT);
        assert!(decide(dir(), &e, &found, None).unwrap_err().contains("missing: LAYOUT"));
    }

    #[test]
    fn another_layout_version_is_refused() {
        let e = expected(&[]).unwrap();
        let err = decide(dir(), &e, &all(&e), Some(LAYOUT_VERSION + 1)).unwrap_err();
        assert!(
            err.contains(&format!(
                "layout version {}, this xdplb uses version {LAYOUT_VERSION}",
                LAYOUT_VERSION + 1
            )),
            "{err}"
        );
        assert!(err.contains("xdplb detach"), "{err}");
    }

    #[test]
    fn a_set_of_the_previous_layout_without_the_ipv4_table_is_refused_as_another_version() {
        let e = expected(&[]).unwrap();
        let mut found = all(&e);
        found.remove(map_names::FLOWS4);
        let err = decide(dir(), &e, &found, Some(8)).unwrap_err();
        assert!(
            err.contains(&format!("layout version 8, this xdplb uses version {LAYOUT_VERSION}")),
            "{err}"
        );
        let err = decide(dir(), &e, &found, Some(5)).unwrap_err();
        assert!(
            err.contains(&format!("layout version 5, this xdplb uses version {LAYOUT_VERSION}")),
            "{err}"
        );
        assert!(err.contains("xdplb detach --pin-path /sys/fs/bpf/xdplb"), "{err}");
    }

    #[test]
    fn a_set_of_an_older_layout_without_the_clock_is_refused_as_another_version() {
        let e = expected(&[]).unwrap();
        let mut found = all(&e);
        found.remove(map_names::FLOWS4);
        found.remove(map_names::CONN_EPOCH);
        let err = decide(dir(), &e, &found, Some(6)).unwrap_err();
        assert!(
            err.contains(&format!("layout version 6, this xdplb uses version {LAYOUT_VERSION}")),
            "{err}"
        );
        assert!(err.contains("xdplb detach --pin-path /sys/fs/bpf/xdplb"), "{err}");
    }

    #[test]
    fn a_connection_table_of_another_size_is_refused_naming_its_config_key() {
        let e = expected(&[(map_names::FLOWS4, 16384), (map_names::CONNS, 16384)]).unwrap();
        let mut found = all(&e);
        found.get_mut(map_names::FLOWS4).unwrap().max_entries = 2048;
        let err = decide(dir(), &e, &found, Some(LAYOUT_VERSION)).unwrap_err();
        assert_eq!(
            err,
            "the pinned connection table /sys/fs/bpf/xdplb/maps/FLOWS4 holds 8192 entries, \
             conn_table_size asks for 65536 (rounded up to a power of two sets of four): a table \
             cannot be resized in place; set conn_table_size back to keep the established \
             flows, or run `xdplb detach --pin-path /sys/fs/bpf/xdplb` (it detaches XDP and \
             removes the pins: established flows are dropped), then start again"
        );
        let mut found = all(&e);
        found.get_mut(map_names::CONNS).unwrap().max_entries = 2048;
        let err = decide(dir(), &e, &found, Some(LAYOUT_VERSION)).unwrap_err();
        assert!(
            err.starts_with(
                "the pinned connection table /sys/fs/bpf/xdplb/maps/CONNS holds 2048 entries, \
                 conn_table_size_v6 (default: a quarter of conn_table_size) asks for 16384"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_pin_of_another_shape_is_refused_naming_the_map_and_both_shapes() {
        let e = expected(&[]).unwrap();
        let mut found = all(&e);
        found.get_mut(map_names::CONNS).unwrap().key_size = 16;
        let err = decide(dir(), &e, &found, Some(LAYOUT_VERSION)).unwrap_err();
        assert!(err.starts_with("pinned map /sys/fs/bpf/xdplb/maps/CONNS does not match"), "{err}");
        assert!(err.contains("key 16 B, value 8 B, 262144 entries, flags 0x2; expected"), "{err}");
        let mut found = all(&e);
        found.get_mut(map_names::CONFIG).unwrap().value_size += 16;
        assert!(decide(dir(), &e, &found, Some(LAYOUT_VERSION)).unwrap_err().contains("CONFIG"));
        let mut found = all(&e);
        found.get_mut(map_names::FLOWS4).unwrap().value_size = 32;
        let err = decide(dir(), &e, &found, Some(LAYOUT_VERSION)).unwrap_err();
        assert!(
            err.starts_with("pinned map /sys/fs/bpf/xdplb/maps/FLOWS4 does not match"),
            "{err}"
        );
    }
}
