//! One test at a time over namespaces, links and pins of fixed names: the tests of
//! a file run on threads of one process, and each builds the same little network.
//! [`Serial::take`] waits its turn, clears what an earlier (killed) run left, and
//! gives a fresh scratch directory; dropping it clears up again, a panicking test
//! included.

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard, PoisonError},
};

/// A test's turn: held until dropped.
pub struct Serial {
    /// `$TMPDIR/NAME`, emptied at the start.
    pub dir: PathBuf,
    down: fn(),
    _turn: MutexGuard<'static, ()>,
}

impl Serial {
    /// Waits for `lock` (a panicked holder does not block the rest), runs `down`
    /// and empties `$TMPDIR/name`.
    ///
    /// # Panics
    /// If the scratch directory cannot be created.
    #[must_use]
    pub fn take(lock: &'static Mutex<()>, name: &str, down: fn()) -> Self {
        let turn = lock.lock().unwrap_or_else(PoisonError::into_inner);
        down();
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self { dir, down, _turn: turn }
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        (self.down)();
    }
}
