//! The ending most mount tests share: check the view, check the upper, unmount (the daemon must
//! exit 0), mount the same layers again, check the view again and find all of it as it was,
//! unmount again (exit 0), and find the lower layers exactly as they were before the first mount.
//!
//! ```ignore
//! let (sc, m) = Scenario::mount(&l, &[]);  // snapshots the lowers, then mounts
//! // ... the test's own steps through `m` ...
//! sc.ending(m).both(check).end();          // `check(root)` on the view and on the upper
//! ```
//!
//! What a test checks is its own: [`Ending::view`] (through the mount, before the remount and
//! after it), [`Ending::upper`] (the upper directory, before the remount), [`Ending::both`],
//! [`Ending::after`] (once the last mount is gone). The ending adds the same steps to every
//! test: the daemon's exit status at both unmounts, the whole view after the remount compared
//! with the whole view before it ([`Tree::read`]: names, types, data, modes, symlink targets,
//! `user.*` xattrs), and the lowers compared with their snapshot ([`Tree::read_raw`]: also
//! mtimes and every xattr).

use std::path::Path;

use crate::{Layers, Mount, Tree};

/// A mount test's frame: its layers and the lowers as they were before the first mount.
pub struct Scenario<'l> {
    layers: &'l Layers,
    lowers: Vec<Tree>,
}

type Check<'c> = Box<dyn Fn(&Path) + 'c>;

impl<'l> Scenario<'l> {
    /// Snapshots the lower layers of `l` (before anything is mounted on them).
    pub fn new(l: &'l Layers) -> Scenario<'l> {
        Scenario {
            layers: l,
            lowers: l.snapshot_lowers(),
        }
    }

    /// [`Scenario::new`], then mounts `l` with the upper, the workdir and `extra` arguments.
    pub fn mount(l: &'l Layers, extra: &[&str]) -> (Scenario<'l>, Mount) {
        let s = Scenario::new(l);
        let m = l.mount(extra);
        (s, m)
    }

    /// Starts the ending of `m`, a mount of this scenario's layers.
    pub fn ending<'c>(&self, m: Mount) -> Ending<'_, 'l, 'c> {
        Ending {
            scenario: self,
            m,
            view: Vec::new(),
            upper: Vec::new(),
            after: Vec::new(),
            args: Vec::new(),
            label: String::new(),
        }
    }

    /// Unmounts `m` (the daemon must exit 0) and asserts that the lowers are as they were.
    #[track_caller]
    pub fn finish(&self, m: Mount) {
        assert_eq!(m.unmount(), Some(0), "unionfs must exit 0 on unmount");
        self.assert_lowers_unchanged();
    }

    /// Asserts that every lower layer is as it was when the scenario began (data, modes,
    /// mtimes, every xattr).
    #[track_caller]
    pub fn assert_lowers_unchanged(&self) {
        self.lowers_unchanged("");
    }

    #[track_caller]
    fn lowers_unchanged(&self, label: &str) {
        assert_eq!(
            self.layers.snapshot_lowers(),
            self.lowers,
            "{label}lower layers must not change"
        );
    }
}

/// The ending of one mount (see the module's documentation); nothing is checked until
/// [`Ending::end`] or [`Ending::remount`].
#[must_use = "an ending checks nothing until .end() or .remount()"]
pub struct Ending<'s, 'l, 'c> {
    scenario: &'s Scenario<'l>,
    m: Mount,
    view: Vec<Check<'c>>,
    upper: Vec<Check<'c>>,
    after: Vec<Box<dyn Fn() + 'c>>,
    args: Vec<String>,
    /// Prefix of the ending's own messages (which case of a test that loops).
    label: String,
}

impl<'c> Ending<'_, '_, 'c> {
    /// `check(root)` with the mount's root, before the remount and after it.
    pub fn view(mut self, check: impl Fn(&Path) + 'c) -> Self {
        self.view.push(Box::new(check));
        self
    }

    /// `check(upper)` with the upper directory (raw, not through the mount), before the remount.
    pub fn upper(mut self, check: impl Fn(&Path) + 'c) -> Self {
        self.upper.push(Box::new(check));
        self
    }

    /// The same `check` as [`Ending::view`] and as [`Ending::upper`].
    pub fn both(self, check: impl Fn(&Path) + Copy + 'c) -> Self {
        self.view(check).upper(check)
    }

    /// `check()` once the last mount is gone, before the lowers are compared.
    pub fn after(mut self, check: impl Fn() + 'c) -> Self {
        self.after.push(Box::new(check));
        self
    }

    /// Names the case in the ending's own messages (for a test that runs it in a loop).
    pub fn named(mut self, label: impl std::fmt::Display) -> Self {
        self.label = format!("{label}: ");
        self
    }

    /// The remount's arguments (none unless given).
    pub fn remount_with(mut self, extra: &[&str]) -> Self {
        self.args = extra.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The checks, the remount and the checks again; returns the new mount, which the test
    /// goes on with and ends with [`Scenario::finish`] (or another ending).
    #[track_caller]
    pub fn remount(self) -> Mount {
        assert!(self.after.is_empty(), "checks after the last unmount need .end()");
        self.checks_and_remount()
    }

    /// The whole ending: the checks, the remount, the checks again, the last unmount, the
    /// checks [`Ending::after`] it, and the lowers as they were.
    #[track_caller]
    pub fn end(mut self) {
        let after = std::mem::take(&mut self.after);
        let (scenario, label) = (self.scenario, self.label.clone());
        let m = self.checks_and_remount();
        assert_eq!(m.unmount(), Some(0), "{label}unionfs must exit 0 on unmount");
        for check in &after {
            check();
        }
        scenario.lowers_unchanged(&label);
    }

    #[track_caller]
    fn checks_and_remount(self) -> Mount {
        let l = self.scenario.layers;
        for check in &self.view {
            check(&self.m.mnt);
        }
        for check in &self.upper {
            check(&l.upper);
        }
        let whole = Tree::read(&self.m.mnt);
        let label = self.label;
        assert_eq!(self.m.unmount(), Some(0), "{label}unionfs must exit 0 on unmount");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let m = l.mount(&args);
        for check in &self.view {
            check(&m.mnt);
        }
        assert_eq!(Tree::read(&m.mnt), whole, "{label}the view after the remount");
        m
    }
}
