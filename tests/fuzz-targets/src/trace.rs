//! The simulator's job-trace parser (`acb_lab::trace::parse`, what `acb-assigner simulate`
//! reads).

use acb_lab::trace::{self, MAX_JOBS, MAX_PHASES};

/// Parses `data` as a job trace. Accepted: the trace parsed; then it has 1 to `MAX_JOBS` jobs,
/// at most `MAX_PHASES` phases in all (what it holds in memory) and no swap bandwidth of 0. A
/// refusal says why.
pub fn trace(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    match trace::parse(text) {
        Ok(t) => {
            assert!(!t.jobs.is_empty() && t.jobs.len() as u64 <= MAX_JOBS, "{} jobs", t.jobs.len());
            assert!(t.swap_bandwidth != Some(0), "a swap bandwidth of 0 was accepted");
            let phases: usize = t.jobs.iter().map(|j| j.phases.len()).sum();
            assert!(phases as u64 <= MAX_PHASES, "{phases} phases held");
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal with no reason");
            false
        }
    }
}
