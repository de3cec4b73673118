//! One demo job, a process of its own (`acb-assigner demo-job`, hidden): a pipeline of work
//! items, each a CPU phase then a GPU phase, asking libacb for a GPU as the white paper's manual
//! mode does. CPU and GPU phases are sleeps standing in for data preparation and kernels on a
//! simulated GPU. The job keeps its state in device memory from libacb (the host backend on
//! simulated GPUs): it writes it in every GPU phase and checks, at the start of the next, that
//! it came back unchanged, wherever it was in between.
//!
//! It tells the demo what it does in lines on stdout, flushed at once, which the demo stamps
//! as they arrive: see [`Line`].

use std::io::Write;
use std::time::Duration;

use super::libacb::Libacb;
use crate::Error;

/// How a job holds its GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    /// The job asks for a GPU once and keeps it for its whole life (static allocation).
    Static,
    /// The job asks for a GPU at each GPU phase and ends the phase after it (acb).
    Brokered,
}

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobPlan {
    /// Work items.
    pub items: u32,
    /// Each item's CPU phase.
    pub cpu: Duration,
    /// Each item's GPU phase.
    pub gpu: Duration,
    /// Static or brokered.
    pub holding: Holding,
    /// Bytes of device memory the job keeps (0: none).
    pub memory: usize,
}

/// A line a job prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// About to call `acb_on_device_begin`.
    Want,
    /// `acb_on_device_begin` returned GPU `index`.
    Got(u32),
    /// A GPU phase starts (kernels would run now).
    GpuStart,
    /// The GPU phase is over.
    GpuEnd,
    /// A work item is done.
    Item,
    /// `acb_on_device_end` returned: the job no longer computes on the GPU.
    Ended,
    /// At exit: bytes of its device memory swapped out and in.
    Swapped(u64, u64),
}

impl Line {
    /// Parses a line; `None` for anything else (a job may print more).
    pub fn parse(text: &str) -> Option<Line> {
        let mut words = text.split_whitespace();
        let line = match (words.next()?, words.next()) {
            ("want", None) => Line::Want,
            ("got", Some(index)) => Line::Got(index.parse().ok()?),
            ("gpu-start", None) => Line::GpuStart,
            ("gpu-end", None) => Line::GpuEnd,
            ("item", None) => Line::Item,
            ("ended", None) => Line::Ended,
            ("swapped", Some(out)) => Line::Swapped(out.parse().ok()?, words.next()?.parse().ok()?),
            _ => return None,
        };
        words.next().is_none().then_some(line)
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Want => f.write_str("want"),
            Line::Got(index) => write!(f, "got {index}"),
            Line::GpuStart => f.write_str("gpu-start"),
            Line::GpuEnd => f.write_str("gpu-end"),
            Line::Item => f.write_str("item"),
            Line::Ended => f.write_str("ended"),
            Line::Swapped(out, into) => write!(f, "swapped {out} {into}"),
        }
    }
}

fn say(line: Line) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(Error::io("stdout"))
}

/// Runs the job with libacb from `library`, against the assigner in `ACB_ASSIGNER`.
pub fn run(library: &std::path::Path, plan: JobPlan) -> Result<(), Error> {
    let acb = Libacb::load(library)?;
    let client = acb.client()?;
    let begin = || -> Result<(), Error> {
        say(Line::Want)?;
        let index = client.begin()?;
        say(Line::Got(index))
    };
    let end = || -> Result<(), Error> {
        client.end()?;
        say(Line::Ended)
    };
    if plan.holding == Holding::Static {
        begin()?;
    }
    let mut state: Option<State> = None;
    for item in 0..plan.items {
        std::thread::sleep(plan.cpu);
        if plan.holding == Holding::Brokered {
            begin()?;
        }
        say(Line::GpuStart)?;
        if plan.memory > 0 {
            match &mut state {
                None => state = Some(State::new(client.alloc(plan.memory)?, plan.memory)),
                Some(s) => s.check()?,
            }
            if let Some(s) = &mut state {
                s.write(u64::from(item) + 1);
            }
        }
        std::thread::sleep(plan.gpu);
        say(Line::GpuEnd)?;
        if plan.holding == Holding::Brokered {
            end()?;
        }
        say(Line::Item)?;
    }
    if plan.holding == Holding::Static {
        end()?;
    }
    let stats = client.memory_stats()?;
    say(Line::Swapped(stats.swapped_out_total, stats.swapped_in_total))
}

/// The job's state in device memory: a pattern, and the number of the last phase that wrote it.
struct State {
    base: *mut u8,
    len: usize,
    phase: u64,
}

/// The pattern is checked every this many bytes (all of it would cost a GPU phase's time).
const STRIDE: usize = 4093;

impl State {
    /// `len` is at least 8 (the demo's settings say so).
    fn new(base: *mut u8, len: usize) -> State {
        for i in (8..len).step_by(STRIDE) {
            // SAFETY: `base` is a resident allocation of `len` bytes (in a GPU phase).
            unsafe { base.add(i).write(pattern(i)) };
        }
        State { base, len, phase: 0 }
    }

    /// In a GPU phase: the last phase's write and the pattern are where they were.
    fn check(&self) -> Result<(), Error> {
        // SAFETY: as in `new`; the header is in the first 8 bytes, the pattern after.
        let phase = unsafe { self.base.cast::<u64>().read_unaligned() };
        let intact = (8..self.len).step_by(STRIDE).all(|i| unsafe { self.base.add(i).read() } == pattern(i));
        if phase == self.phase && intact {
            Ok(())
        } else {
            Err(Error::MemoryChanged { found: phase, expected: self.phase })
        }
    }

    fn write(&mut self, phase: u64) {
        // SAFETY: as in `new`.
        unsafe { self.base.cast::<u64>().write_unaligned(phase) };
        self.phase = phase;
    }
}

fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ 0x5a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_as_printed() {
        let lines =
            [Line::Want, Line::Got(3), Line::GpuStart, Line::GpuEnd, Line::Item, Line::Ended, Line::Swapped(5, 7)];
        for line in lines {
            assert_eq!(Line::parse(&line.to_string()), Some(line));
        }
    }

    #[test]
    fn other_lines_are_not_taken_for_the_protocol() {
        for text in ["", "got", "got x", "got 1 2", "item 1", "wanted", "acb: warning", "swapped 1", "swapped 1 x"] {
            assert_eq!(Line::parse(text), None, "{text:?}");
        }
    }
}
