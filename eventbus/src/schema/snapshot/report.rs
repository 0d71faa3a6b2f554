//! What an export wrote and what a check found: files, findings, the report.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::schema::compat::{Impact, Mode, SchemaDiff, Verdict};

/// One file [`Registry::export`](crate::schema::Registry::export) wrote or found up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportedFile {
    /// The file.
    pub path: PathBuf,
    /// The CloudEvents type.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// Whether the file was created or its content replaced.
    pub written: bool,
}

/// Which readers [`Registry::check_with`](crate::schema::Registry::check_with) requires to keep working.
///
/// The defaults, and why:
///
/// - a version the directory already has, changed in place: [`Mode::Full`].
///   Its messages carry the same `dataschema`, so nothing tells an old consumer
///   that a message is new, nor a new consumer that it is old.
/// - a version the directory does not have yet: [`Mode::Backward`] against the
///   highest lower version. New consumers read messages written before the
///   upgrade; old consumers never see the new version, because version gating
///   parks it until they are upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckOptions {
    /// The mode for a version changed in place.
    pub same_version: Mode,
    /// The mode for a new version against the previous one.
    pub new_version: Mode,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            same_version: Mode::Full,
            new_version: Mode::Backward,
        }
    }
}

impl CheckOptions {
    /// The defaults: full for a changed version, backward for a new one.
    pub fn new() -> Self {
        CheckOptions::default()
    }

    /// Sets the mode for a version changed in place.
    pub fn same_version(mut self, mode: Mode) -> Self {
        self.same_version = mode;
        self
    }

    /// Sets the mode for a new version; [`Mode::Full`] for consumers that must
    /// never park a message.
    pub fn new_version(mut self, mode: Mode) -> Self {
        self.new_version = mode;
        self
    }
}

/// What [`Registry::check`](crate::schema::Registry::check) found for one event type and version.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Finding {
    /// The CloudEvents type.
    pub event_type: String,
    /// The version the finding is about.
    pub version: u32,
    /// What was found.
    pub kind: FindingKind,
}

/// What kind of [`Finding`] it is.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FindingKind {
    /// The registered schema is the committed one.
    Unchanged,
    /// The version is committed and its schema changed; it passes if the diff
    /// is not breaking under `mode`.
    Changed {
        /// Committed (old) to registered (new).
        diff: SchemaDiff,
        /// The mode the diff must satisfy.
        mode: Mode,
    },
    /// A version newer than every committed one; it passes if the diff from
    /// `previous` is not breaking under `mode`.
    NewVersion {
        /// The version compared with (the committed file if there is one,
        /// else the registered schema).
        previous: u32,
        /// Previous (old) to this version (new).
        diff: SchemaDiff,
        /// The mode the diff must satisfy.
        mode: Mode,
    },
    /// Neither this version nor any lower one is committed: nothing to
    /// compare with. Passes; export commits it.
    NotInSnapshot,
    /// The committed destination differs: consumers subscribed to the old one
    /// stop receiving the event.
    DestinationChanged {
        /// The committed destination.
        committed: String,
        /// The registered destination.
        registered: String,
    },
    /// The type is committed but no longer registered: its consumers would
    /// never receive it again. Delete its directory if that is intended.
    TypeRemoved,
    /// The committed version is higher than any registered one: messages of
    /// that version may exist and this code cannot read them.
    VersionRemoved {
        /// The highest registered version.
        newest_registered: u32,
    },
}

impl Finding {
    /// Whether this finding lets the check pass.
    pub fn passed(&self) -> bool {
        match &self.kind {
            FindingKind::Unchanged | FindingKind::NotInSnapshot => true,
            FindingKind::Changed { diff, mode } | FindingKind::NewVersion { diff, mode, .. } => {
                diff.verdict(*mode) != Verdict::Breaking
            }
            FindingKind::DestinationChanged { .. }
            | FindingKind::TypeRemoved
            | FindingKind::VersionRemoved { .. } => false,
        }
    }

    /// Whether the committed file already holds what export would write.
    pub fn is_up_to_date(&self) -> bool {
        match &self.kind {
            FindingKind::Unchanged
            | FindingKind::TypeRemoved
            | FindingKind::VersionRemoved { .. } => true,
            FindingKind::Changed { .. }
            | FindingKind::NewVersion { .. }
            | FindingKind::NotInSnapshot
            | FindingKind::DestinationChanged { .. } => false,
        }
    }

    /// The schema diff behind this finding, if there is one.
    pub fn diff(&self) -> Option<&SchemaDiff> {
        match &self.kind {
            FindingKind::Changed { diff, .. } | FindingKind::NewVersion { diff, .. } => Some(diff),
            _ => None,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.passed() { "ok  " } else { "FAIL" };
        write!(f, "{status} {} v{}: ", self.event_type, self.version)?;
        let mode = match &self.kind {
            FindingKind::Unchanged => return writeln!(f, "unchanged"),
            FindingKind::NotInSnapshot => {
                return writeln!(f, "not in the snapshot yet; export to commit it")
            }
            FindingKind::DestinationChanged {
                committed,
                registered,
            } => {
                return writeln!(
                    f,
                    "destination changed from `{committed}` to `{registered}`: consumers of \
                     `{committed}` stop receiving it; give it a new type instead"
                )
            }
            FindingKind::TypeRemoved => {
                return writeln!(
                    f,
                    "committed but no longer registered: its consumers never receive it \
                     again; delete its schema directory if that is intended"
                )
            }
            FindingKind::VersionRemoved { newest_registered } => {
                return writeln!(
                    f,
                    "committed, but the code registers at most v{newest_registered}: \
                     messages of v{} cannot be read",
                    self.version
                )
            }
            FindingKind::Changed { diff, mode } => {
                let verdict = diff.verdict(*mode);
                writeln!(
                    f,
                    "changed in place, {verdict} ({mode} compatibility required: the same \
                     version must stay readable by old and new readers)"
                )?;
                *mode
            }
            FindingKind::NewVersion {
                previous,
                diff,
                mode,
            } => {
                let verdict = diff.verdict(*mode);
                writeln!(
                    f,
                    "new version, {verdict} with v{previous} ({mode} compatibility required: \
                     its consumers must read v{previous} messages)"
                )?;
                *mode
            }
        };
        let Some(diff) = self.diff() else {
            return Ok(());
        };
        for change in diff.changes() {
            let mark = if change.breaks(mode) { "x" } else { "-" };
            writeln!(f, "       {mark} {change}")?;
            let directions = [
                (
                    &change.backward,
                    Mode::Backward,
                    "new readers, old messages",
                ),
                (&change.forward, Mode::Forward, "old readers, new messages"),
            ];
            for (impact, direction, who) in directions {
                if let Impact::Breaking(why) = impact {
                    let label = if matches!(mode, Mode::Full) || mode == direction {
                        "breaks"
                    } else {
                        "note: would break"
                    };
                    writeln!(f, "           {label} {direction} ({who}): {why}")?;
                }
            }
        }
        Ok(())
    }
}

/// The outcome of [`Registry::check`](crate::schema::Registry::check): one [`Finding`] per event type and
/// version, and whether the check passed. Its `Display` is the report for CI
/// logs.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub(super) dir: PathBuf,
    pub(super) findings: Vec<Finding>,
}

impl CheckReport {
    /// Every finding, by type and version.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The findings that fail the check.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.passed())
    }

    /// Whether no finding fails: every change is compatible as required.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(Finding::passed)
    }

    /// Whether exporting would change nothing: every registered version is
    /// committed exactly.
    pub fn is_up_to_date(&self) -> bool {
        self.findings.iter().all(Finding::is_up_to_date)
    }

    /// The directory checked against.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            write!(f, "{finding}")?;
        }
        let failed = self.failures().count();
        let outcome = if failed == 0 { "passed" } else { "FAILED" };
        let versions = self.findings.len();
        write!(
            f,
            "schema check against `{}` {outcome}: {versions} event version{}, {failed} incompatible",
            self.dir.display(),
            if versions == 1 { "" } else { "s" },
        )?;
        if !self.is_up_to_date() && failed == 0 {
            write!(f, "; the snapshot is out of date, export to update it")?;
        }
        writeln!(f)
    }
}
