//! The conformance suite: every case of the notifier contract (`docs/CONTRACT.md` in
//! the repository, C-01 to C-23), run by every backend unchanged against its real primary MMU.
//!
//! A backend implements [`Harness`] (create address spaces, map,
//! fault, unmap, protect, migrate, fork and break copy-on-write, reclaim, tear down, run
//! tasks at once, and say whether a frame was freed) and calls [`run`]. The suite drives
//! the primary MMU through the harness; small secondary MMUs written against the core's
//! public API ([`consumers`]: a KVM-like shadow page table, a device TLB, an XPMEM-like
//! exporter with remote importers, HMM-like interval mirrors, one- and two-pass) check
//! every access they make against the two oracles of C-09: the frame was not freed
//! ([`Harness::frame_live`]), and, where the backend can tell, the translation is the
//! primary entry of that address at that moment ([`Harness::check_translation`]; the
//! cases that use it say "translation oracle not applicable" on a backend without it).
//! The second sees what the first cannot: a stale translation to a frame that is still
//! allocated (after a migration, a copy-on-write break, an mprotect). Each consumer also
//! exists in a deliberately broken form ([`Twin`]); [`Twin::catches`] names the cases
//! that must fail with it, so a run with a twin proves the suite has teeth.
//!
//! The consumers subscribe to the core by default ([`run`]). A backend whose platform
//! has a notifier of its own (Linux) also runs them subscribed to that one
//! ([`run_with`] and a [`Notifiers`] mode of its own, see [`subscribe`]), so that the
//! suite's expectations are shown to hold for the platform's implementation too; the
//! checks of what only the core has (typed misuse errors, direct calls, two-pass
//! intervals, shared subscribers, the export registry) are then not applicable.
//!
//! **Testing your own secondary MMU.** Implement [`SecondaryMmu`] for your consumer (it
//! owns its `notifier_core::Subscriber` or `IntervalSubscriber`, faults translations in
//! through the [`Harness`], reports each use of a translation to [`Uses`]) and call
//! [`run_consumer`]: it is put through the consumer-facing cases (C-01 to C-04, C-06,
//! C-07, C-09 with both oracles, C-10, and C-12 and C-14 for the interval kinds) on any
//! harness, with the same KTAP output. The simulator's `backend_sim::SimHarness` is the
//! test bed (deterministic with a seed, or on real threads); the repository's
//! `examples/consumer-check` crate is a worked example, with broken variants and the
//! cases that catch them. See [`runner`].
//!
//! Output: KTAP version 1, as KUnit prints it, so that kernel test tooling reads it:
//!
//! ```text
//! KTAP version 1
//! # notifier conformance suite on hermit
//! # the cases: docs/CONTRACT.md
//! 1..23
//! ok 1 C-01 register
//! ok 6 C-06 coverage # 1 of 5 operations; not on this backend: protect, cow, migrate, reclaim
//! not ok 9 C-09 no_stale_translation # (why it failed)
//! ok 18 C-18 export_page_not_freed_while_mapped # SKIP (why the backend cannot run it)
//! 21 passed, 1 failed, 1 skipped
//! ```
//!
//! One result line per case: `ok` (with what ran after `#` when a backend could make
//! only part of the case), `not ok` with the reason after `#`, or `ok … # SKIP reason`
//! when the case is not applicable on the backend. The last line, `N passed, N failed`
//! (with `, N skipped` when a case was skipped), is not KTAP; CI reads it. The cases are
//! described in the repository's `docs/CONTRACT.md`.
//!
//! The crate is `#![no_std]` and allocates nothing: it runs inside the Linux kernel and
//! inside Hermit.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
// Failure messages travel inline (the suite allocates nothing), so `Err` is large;
// it is only built when a case fails.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

use core::fmt::{self, Write};

use arrayvec::{ArrayString, ArrayVec};

mod cases;
pub mod consumers;
pub mod harness;
pub mod runner;
pub mod subscribe;

pub use harness::Harness;
pub use runner::{run_consumer, Kind, Report, SecondaryMmu, Uses};
pub use subscribe::{Core, Notifiers};

/// A deliberately broken consumer, and the cases that must catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Twin {
    /// The KVM-like shadow MMU installs what it read without checking the sequence: the
    /// 2008 race.
    KvmIgnoresSeq,
    /// The shadow MMU postpones its flush past `end` (to its next fault).
    KvmFlushAfterEnd,
    /// The shadow MMU keeps its translations after `release`.
    KvmCachesPastRelease,
    /// The shadow MMU refuses starts that are blockable.
    KvmRefusesWhileBlockable,
    /// The device TLB ignores `invalidate_secondary_tlbs`.
    DeviceTlbIgnoresFlush,
    /// The exporter grants remote maps while an invalidation is in flight and revokes
    /// only at `end`.
    ExporterIgnoresInvalidation,
    /// The interval mirror installs without `read_retry`.
    MirrorIgnoresSeq,
    /// The two-pass mirror queues in `invalidate_start` but never waits in
    /// `invalidate_finish` (it completes lazily, at its next fault).
    TwoPassSkipsFinish,
    /// The page-keyed exporter hooked in the reverse-map walk, as first proposed in 2008:
    /// it never hears about a page whose primary entry is already gone.
    ExportHookedInRmap,
    /// The shadow MMU zaps only in `end`, not in `start`: between the primary MMU's
    /// change and `end` the guest uses the old translations (a write lost after a
    /// migration, a write through a now read-only entry). The pages are still
    /// allocated then: only the second oracle of C-09 sees it.
    KvmZapsInEnd,
    /// The device TLB ignores `invalidate_secondary_tlbs` and flushes at `end` instead:
    /// as [`Twin::KvmZapsInEnd`], the device uses old entries of live pages.
    DeviceTlbFlushesAtEnd,
    /// The interval mirror calls `set_seq` after releasing its lock: a fault that read
    /// the old entry and takes the lock in between installs it (`read_retry` still
    /// false) and keeps it once the primary entry changed.
    MirrorSetsSeqAfterUnlock,
    /// The shadow MMU counts a non-blockable start that it refuses (its lock is busy)
    /// as begun, and closes it at once with its end bookkeeping: its count of
    /// invalidations in flight stays one below the truth, so a fault installs an entry
    /// while an invalidation is changing it.
    KvmCountsRefusedStart,
}

impl Twin {
    /// Every twin.
    pub const ALL: [Twin; 13] = [
        Twin::KvmIgnoresSeq,
        Twin::KvmFlushAfterEnd,
        Twin::KvmCachesPastRelease,
        Twin::KvmRefusesWhileBlockable,
        Twin::DeviceTlbIgnoresFlush,
        Twin::ExporterIgnoresInvalidation,
        Twin::MirrorIgnoresSeq,
        Twin::TwoPassSkipsFinish,
        Twin::ExportHookedInRmap,
        Twin::KvmZapsInEnd,
        Twin::DeviceTlbFlushesAtEnd,
        Twin::MirrorSetsSeqAfterUnlock,
        Twin::KvmCountsRefusedStart,
    ];

    /// Its name on command lines (`--broken NAME`).
    pub const fn name(self) -> &'static str {
        match self {
            Twin::KvmIgnoresSeq => "kvm-ignores-seq",
            Twin::KvmFlushAfterEnd => "kvm-flush-after-end",
            Twin::KvmCachesPastRelease => "kvm-caches-past-release",
            Twin::KvmRefusesWhileBlockable => "kvm-refuses-while-blockable",
            Twin::DeviceTlbIgnoresFlush => "device-tlb-ignores-flush",
            Twin::ExporterIgnoresInvalidation => "exporter-ignores-invalidation",
            Twin::MirrorIgnoresSeq => "mirror-ignores-seq",
            Twin::TwoPassSkipsFinish => "two-pass-skips-finish",
            Twin::ExportHookedInRmap => "export-hooked-in-rmap",
            Twin::KvmZapsInEnd => "kvm-zaps-in-end",
            Twin::DeviceTlbFlushesAtEnd => "device-tlb-flushes-at-end",
            Twin::MirrorSetsSeqAfterUnlock => "mirror-sets-seq-after-unlock",
            Twin::KvmCountsRefusedStart => "kvm-counts-refused-start",
        }
    }

    /// The twin called `name`.
    pub fn from_name(name: &str) -> Option<Twin> {
        Twin::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The cases that must fail when this twin replaces the correct consumer (and no
    /// other may).
    pub const fn catches(self) -> &'static [&'static str] {
        match self {
            Twin::KvmIgnoresSeq => &["C-09"],
            Twin::KvmFlushAfterEnd => &["C-06", "C-09"],
            Twin::KvmCachesPastRelease => &["C-04"],
            Twin::KvmRefusesWhileBlockable => &["C-08"],
            Twin::DeviceTlbIgnoresFlush => &["C-09", "C-10"],
            Twin::ExporterIgnoresInvalidation => &["C-09"],
            Twin::MirrorIgnoresSeq => &["C-09", "C-12"],
            Twin::TwoPassSkipsFinish => &["C-14"],
            Twin::ExportHookedInRmap => &["C-19"],
            Twin::KvmZapsInEnd => &["C-09"],
            Twin::DeviceTlbFlushesAtEnd => &["C-09"],
            Twin::MirrorSetsSeqAfterUnlock => &["C-09", "C-12"],
            Twin::KvmCountsRefusedStart => &["C-09"],
        }
    }

    /// The cases that must catch it on a backend without the second oracle of C-09
    /// ([`Harness::translation_oracle`] is `Some`: Linux, Hermit), where only the
    /// frame-liveness oracle sees a stale translation, that is one to a frame already
    /// freed. The twins that use old translations of pages that are still allocated
    /// (zapping or flushing only at `end`, a refused start counted as begun) are then
    /// caught by nothing, and the interval mirror's by C-12 alone (in C-09 it works in
    /// the protection-change phase, where no frame is freed). Empty: nothing may fail.
    pub const fn catches_without_translation_oracle(self) -> &'static [&'static str] {
        match self {
            Twin::KvmZapsInEnd | Twin::DeviceTlbFlushesAtEnd | Twin::KvmCountsRefusedStart => &[],
            Twin::MirrorIgnoresSeq | Twin::MirrorSetsSeqAfterUnlock => &["C-12"],
            t => t.catches(),
        }
    }

    /// The cases that must catch it on `h`: [`catches`](Self::catches) where `h` has
    /// the second oracle of C-09, else
    /// [`catches_without_translation_oracle`](Self::catches_without_translation_oracle).
    pub fn catches_on<H: Harness>(self, h: &H) -> &'static [&'static str] {
        match h.translation_oracle() {
            None => self.catches(),
            Some(_) => self.catches_without_translation_oracle(),
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Replace one consumer by its broken twin.
    pub twin: Option<Twin>,
    /// Run only the case with this id (e.g. `"C-09"`).
    pub only: Option<&'static str>,
    /// Rounds of the concurrent cases (more finds rarer interleavings).
    pub rounds: u32,
    /// List subscribers in C-17.
    pub many_list: usize,
    /// Interval subscribers in C-17.
    pub many_intervals: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            twin: None,
            only: None,
            rounds: 200,
            many_list: 2_000,
            many_intervals: 20_000,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Cases that passed.
    pub passed: u32,
    /// Cases that failed.
    pub failed: u32,
    /// Cases not applicable on this backend.
    pub skipped: u32,
    failed_ids: ArrayVec<&'static str, 32>,
    skipped_ids: ArrayVec<(&'static str, &'static str), 32>,
}

impl Summary {
    /// The ids of the cases that failed, in order.
    pub fn failed_cases(&self) -> &[&'static str] {
        &self.failed_ids
    }

    /// The cases that were not applicable, in order: id and reason.
    pub fn skipped_cases(&self) -> &[(&'static str, &'static str)] {
        &self.skipped_ids
    }
}

/// A failure message (bounded: the suite allocates nothing).
pub type Msg = ArrayString<240>;

/// Why a case did not pass.
#[derive(Debug, Clone)]
pub enum Fail {
    /// The contract was broken; the text says how.
    Failed(Msg),
    /// The backend lacks what the case needs.
    NotApplicable(&'static str),
}

impl From<harness::HarnessError> for Fail {
    fn from(e: harness::HarnessError) -> Self {
        match e {
            harness::HarnessError::Unsupported(r) => Fail::NotApplicable(r),
            other => fail(format_args!("harness: {other:?}")),
        }
    }
}

impl From<notifier_core::Error> for Fail {
    fn from(e: notifier_core::Error) -> Self {
        fail(format_args!("core refused: {e} ({e:?})"))
    }
}

impl From<consumers::FaultError> for Fail {
    fn from(e: consumers::FaultError) -> Self {
        match e {
            consumers::FaultError::Primary(h) => h.into(),
            other => fail(format_args!("secondary fault: {other:?}")),
        }
    }
}

/// A [`Fail::Failed`] with a formatted message (truncated if long).
pub fn fail(args: fmt::Arguments<'_>) -> Fail {
    let mut m = Msg::new();
    let _ = Trunc(&mut m).write_fmt(args);
    Fail::Failed(m)
}

struct Trunc<'a>(&'a mut Msg);
impl Write for Trunc<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.0.try_push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Result of one case.
pub type Outcome = Result<(), Fail>;

/// Run the suite on `h`, its consumers subscribed to the core, writing its results to
/// `out` in KTAP (see the crate doc: one result line per case, then the closing line).
pub fn run<H: Harness>(h: &H, cfg: &Config, out: &mut dyn Write) -> Summary {
    run_with::<H, Core>(h, cfg, out)
}

/// Run the suite on `h` with the consumers subscribed the way mode `S` says (a
/// backend's reference mode: its platform's own notifier). Same output as [`run`]; the
/// header names the mode when it is not [`Core`].
pub fn run_with<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config, out: &mut dyn Write) -> Summary {
    let core = <S as Notifiers<H>>::NAME == <Core as Notifiers<H>>::NAME;
    let all = cases::all::<H, S>();
    ktap(
        out,
        format_args!(
            "notifier conformance suite on {}{}{}{}{}",
            OneLine(h.name()),
            if core { "" } else { ", subscribed to: " },
            if core { "" } else { S::NAME },
            if cfg.twin.is_some() {
                ", broken consumer: "
            } else {
                ""
            },
            cfg.twin.map_or("", Twin::name)
        ),
        all.iter().map(|(id, name, _)| (*id, *name)),
        cfg.only,
        &mut |i| (all[i].2)(h, cfg),
    )
}

/// The KTAP printer of every run: the header (`# {header}`), one result line per case
/// chosen by `only` (`run(i)` runs the `i`-th of `cases`), the closing summary line.
pub(crate) fn ktap(
    out: &mut dyn Write,
    header: fmt::Arguments<'_>,
    cases: impl Iterator<Item = (&'static str, &'static str)> + Clone,
    only: Option<&str>,
    run: &mut dyn FnMut(usize) -> cases::CaseResult,
) -> Summary {
    let mut sum = Summary::default();
    let chosen = |id: &str| only.is_none_or(|o| o == id);
    let planned = cases.clone().filter(|(id, _)| chosen(id)).count();
    let _ = writeln!(out, "KTAP version 1");
    let _ = writeln!(out, "# {header}");
    let _ = writeln!(out, "# the cases: docs/CONTRACT.md");
    let _ = writeln!(out, "1..{planned}");
    let mut n = 0;
    for (i, (id, name)) in cases.enumerate() {
        if !chosen(id) {
            continue;
        }
        n += 1;
        // KTAP: `ok N name`, `ok N name # SKIP reason`, `not ok N name # reason`; what
        // follows `#` is kept on the one line (a message's line breaks become spaces).
        match run(i) {
            Ok(None) => {
                sum.passed += 1;
                let _ = writeln!(out, "ok {n} {id} {name}");
            }
            Ok(Some(note)) => {
                sum.passed += 1;
                let _ = writeln!(out, "ok {n} {id} {name} # {}", OneLine(&note));
            }
            Err(Fail::Failed(m)) => {
                sum.failed += 1;
                let _ = sum.failed_ids.try_push(id);
                let _ = writeln!(out, "not ok {n} {id} {name} # {}", OneLine(&m));
            }
            Err(Fail::NotApplicable(r)) => {
                sum.skipped += 1;
                let _ = sum.skipped_ids.try_push((id, r));
                let _ = writeln!(out, "ok {n} {id} {name} # SKIP {}", OneLine(r));
            }
        }
    }
    // Not a KTAP line (KTAP readers pass over it): the summary CI greps for.
    let _ = write!(out, "{} passed, {} failed", sum.passed, sum.failed);
    if sum.skipped > 0 {
        let _ = write!(out, ", {} skipped", sum.skipped);
    }
    let _ = writeln!(out);
    sum
}

/// Text written with its line breaks as spaces, so that it stays on its KTAP line.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.0.split(['\n', '\r']).enumerate() {
            if i > 0 {
                f.write_char(' ')?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}
