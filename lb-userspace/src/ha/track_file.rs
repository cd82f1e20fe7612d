//! The keepalived engine: a `track_file` (with weight 0) that says `0` while this
//! balancer should carry traffic and `1` otherwise. keepalived watches the file
//! with inotify and puts its VRRP instance in FAULT on a non-zero value: a
//! priority-0 advert hands the floating address to the peer at once, without
//! waiting out the master-down timer. Written whole and renamed into place, so
//! keepalived never reads a half-written value.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{Announcement, Engine};

pub struct TrackFile {
    path: PathBuf,
}

/// The file's content for an announcement.
#[must_use]
pub fn content(announcement: &Announcement) -> &'static str {
    if announcement.is_serving() { "0\n" } else { "1\n" }
}

impl TrackFile {
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Engine for TrackFile {
    fn name(&self) -> &'static str {
        "track_file"
    }

    fn tell(&mut self, announcement: &Announcement) -> anyhow::Result<()> {
        let want = content(announcement);
        if fs::read_to_string(&self.path).is_ok_and(|now| now == want) {
            return Ok(());
        }
        write_atomically(&self.path, want)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.xdplb-tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_says_0_while_serving_and_1_otherwise_and_is_repaired() {
        let dir = std::env::temp_dir().join(format!("xdplb-track-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("vrrp.track");
        let mut engine = TrackFile::new(path.clone());
        let serving = Announcement::Serving(["192.0.2.1".parse().expect("ip")].into());
        engine.tell(&Announcement::Withdrawn).expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "1\n");
        engine.tell(&serving).expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "0\n");
        fs::write(&path, "7\n").expect("someone else");
        engine.tell(&serving).expect("repair");
        assert_eq!(fs::read_to_string(&path).expect("read"), "0\n");
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1, "no temporary file left");
        fs::remove_dir_all(&dir).expect("cleanup");
        let mut nowhere = TrackFile::new(dir.join("missing").join("vrrp.track"));
        let err = nowhere.tell(&serving).expect_err("no directory");
        assert!(format!("{err:#}").starts_with(&format!("writing {}", dir.display())), "{err:#}");
    }
}
