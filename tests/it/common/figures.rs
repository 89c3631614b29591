//! The figure tables the fault harnesses (`fault_figures`, `buffer_figures`) print and check.

/// One row of a figure table.
#[derive(Default)]
pub struct Figure {
    pub scenario: &'static str,
    pub fault: String,
    /// Rows sent (or answered 200, where the harness counts acceptances).
    pub sent: i64,
    pub written: i64,
    pub lost: i64,
    pub duplicates: i64,
    pub notes: Vec<String>,
    pub problems: Vec<String>,
}

impl Figure {
    pub fn check(&mut self, ok: bool, problem: impl Into<String>) {
        if !ok {
            self.problems.push(problem.into());
        }
    }
}

/// The harness's arguments, or `None` when it should do nothing: `--list` (it prints its one
/// test) or a name filter that does not match `name`.
pub fn harness_args(name: &str) -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{name}: test");
        return None;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        return None;
    }
    Some(args)
}

/// Print the table (`sent` is the header of the `sent` column), then fail on any problem.
pub fn report(name: &str, sent: &str, figures: &[Figure]) {
    println!("\n| scenario | fault | {sent} | written (distinct) | lost | duplicates | observed |");
    println!("|---|---|---|---|---|---|---|");
    for f in figures {
        println!("| {} | {} | {} | {} | {} | {} | {} |", f.scenario, f.fault, f.sent, f.written, f.lost, f.duplicates, f.notes.join("; "));
    }
    println!();
    let problems: Vec<String> = figures.iter().flat_map(|f| f.problems.iter().map(move |p| format!("{}: {p}", f.scenario))).collect();
    assert!(problems.is_empty(), "{name} failed:\n  {}", problems.join("\n  "));
}
