//! Phase profiling, for `agarun --profile`: when `ACB_PROFILE` names a file, every client
//! appends one JSON line per phase boundary to it, which agarun turns into a job trace for
//! `acb-assigner simulate`.
//!
//! A line: `{"t": UNIX_NS, "pid": PID, "job": NAME, "event": E}` with E one of `start` (the
//! client is made), `ask` (a begin is called), `got` (the begin returned GPUs; with `gpus` and
//! `memory`, the bytes per GPU granted: the lease's fence, not what the job uses), `end` (the GPU
//! phase ended; with `swappable`, the bytes of swappable device memory the job held then, which
//! is what goes to host memory if its GPU goes to another job) and `stop` (the client is freed). Wall-clock nanoseconds, so that lines of several processes line up. Each line is one
//! `write` to a file opened for appending, so processes sharing the file do not interleave.
//! Profiling must never break the job: a write that fails is dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a client's profile lines go.
#[derive(Debug)]
pub(crate) struct Profile {
    file: File,
    job: String,
}

/// A phase boundary.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mark {
    Start,
    Ask,
    Got { gpus: usize, memory: u64 },
    End { swappable: u64 },
    Stop,
}

impl Profile {
    /// A profile when `ACB_PROFILE` is set and its file can be opened; `None` otherwise (a
    /// file that cannot be opened is said once on stderr, and the job goes on).
    pub(crate) fn from_env(job: &str) -> Option<Profile> {
        let path = std::env::var_os("ACB_PROFILE").filter(|p| !p.is_empty())?;
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => Some(Profile { file, job: job.to_owned() }),
            Err(e) => {
                eprintln!("libacb: ACB_PROFILE={}: {e}; not profiling", std::path::Path::new(&path).display());
                None
            }
        }
    }

    pub(crate) fn mark(&self, mark: Mark) {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut line = serde_json::json!({
            "t": u64::try_from(t).unwrap_or(u64::MAX),
            "pid": std::process::id(),
            "job": self.job,
            "event": match mark {
                Mark::Start => "start",
                Mark::Ask => "ask",
                Mark::Got { .. } => "got",
                Mark::End { .. } => "end",
                Mark::Stop => "stop",
            },
        });
        match (mark, line.as_object_mut()) {
            (Mark::Got { gpus, memory }, Some(fields)) => {
                fields.insert("gpus".into(), gpus.into());
                fields.insert("memory".into(), memory.into());
            }
            (Mark::End { swappable }, Some(fields)) => {
                fields.insert("swappable".into(), swappable.into());
            }
            _ => {}
        }
        let mut text = line.to_string();
        text.push('\n');
        // One write: an appending file takes it whole.
        let _ = (&self.file).write_all(text.as_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_the_fields_agarun_reads() {
        let path = std::env::temp_dir().join(format!("acb-profile-unit-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let p = Profile { file, job: "fold \"1\"".into() };
        p.mark(Mark::Ask);
        p.mark(Mark::Got { gpus: 2, memory: 1 << 30 });
        p.mark(Mark::End { swappable: 32 << 20 });
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["event"], "ask");
        assert_eq!(lines[0]["job"], "fold \"1\"");
        assert_eq!(lines[0]["pid"], std::process::id());
        assert_eq!(lines[1]["event"], "got");
        assert_eq!((lines[1]["gpus"].as_u64(), lines[1]["memory"].as_u64()), (Some(2), Some(1 << 30)));
        assert!(lines[1]["t"].as_u64() >= lines[0]["t"].as_u64());
        assert_eq!((lines[2]["event"].as_str(), lines[2]["swappable"].as_u64()), (Some("end"), Some(32 << 20)));
    }
}
