//! Running scenarios and printing the results.
//!
//! One line per scenario — `PASS name`, `FAIL name: reason` or `SKIP name: reason` — then a
//! summary line `N passed, N failed, N skipped`.

use std::io::{self, Write};

use crate::scenarios::{self, Ctx, Outcome, Scenario};

/// Counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Scenarios that passed.
    pub passed: usize,
    /// Scenarios that failed.
    pub failed: usize,
    /// Scenarios that were skipped.
    pub skipped: usize,
}

impl Summary {
    /// Whether nothing failed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// The scenarios named in `only`, in the order of [`scenarios::all`]; all of them if `only` is
/// empty. Fails with the first unknown name.
pub fn select(only: &[String]) -> Result<Vec<&'static Scenario>, String> {
    if let Some(unknown) = only.iter().find(|n| scenarios::find(n).is_none()) {
        return Err(format!("unknown scenario {unknown:?}"));
    }
    Ok(scenarios::all().iter().filter(|s| only.is_empty() || only.iter().any(|n| n == s.name)).collect())
}

/// Runs `selected` one after the other against `ctx`, writing a line per scenario (as it
/// finishes) and the summary line to `out`.
pub fn run(ctx: &Ctx, selected: &[&Scenario], out: &mut dyn Write) -> io::Result<Summary> {
    let mut summary = Summary::default();
    for s in selected {
        match s.run_catching(ctx) {
            Ok(Outcome::Pass) => {
                summary.passed += 1;
                writeln!(out, "PASS {}", s.name)?;
            }
            Ok(Outcome::Skip(reason)) => {
                summary.skipped += 1;
                writeln!(out, "SKIP {}: {reason}", s.name)?;
            }
            Err(f) => {
                summary.failed += 1;
                writeln!(out, "FAIL {}: {f}", s.name)?;
            }
        }
        out.flush()?;
    }
    writeln!(out, "{} passed, {} failed, {} skipped", summary.passed, summary.failed, summary.skipped)?;
    Ok(summary)
}
