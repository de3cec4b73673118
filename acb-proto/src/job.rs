//! The rule for a job's name, shared by the assigner (which refuses a `Hello` that breaks it)
//! and the clients (which refuse it at config time, so that a bad `ACB_JOB_ID` is reported where
//! it is set, not as a refused session later).

/// The longest job name accepted, in bytes.
pub const MAX_JOB_BYTES: usize = 256;

/// Why a job name is refused; the message names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobNameError {
    /// Longer than [`MAX_JOB_BYTES`].
    #[error("a job name has at most {MAX_JOB_BYTES} bytes, not {0}")]
    TooLong(usize),
    /// A control character (newline, tab, NUL, ...).
    #[error("a job name has no control characters (found {0:?})")]
    ControlCharacter(char),
}

/// Checks `job` against the rule: at most [`MAX_JOB_BYTES`] bytes, no control characters.
/// (Empty is allowed on the wire; clients make up a name instead of sending one.)
pub fn check_job_name(job: &str) -> Result<(), JobNameError> {
    if job.len() > MAX_JOB_BYTES {
        return Err(JobNameError::TooLong(job.len()));
    }
    match job.chars().find(|c| c.is_control()) {
        Some(c) => Err(JobNameError::ControlCharacter(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_in_bytes_and_control_characters_are_refused() {
        assert_eq!(check_job_name(&"a".repeat(MAX_JOB_BYTES)), Ok(()));
        assert_eq!(check_job_name(&"a".repeat(MAX_JOB_BYTES + 1)), Err(JobNameError::TooLong(257)));
        // 129 two-byte characters: 258 bytes, 129 chars.
        assert_eq!(check_job_name(&"é".repeat(129)), Err(JobNameError::TooLong(258)));
        assert_eq!(check_job_name("a\nb"), Err(JobNameError::ControlCharacter('\n')));
        assert!(check_job_name(&"x".repeat(300)).unwrap_err().to_string().contains("at most 256 bytes, not 300"));
    }
}
