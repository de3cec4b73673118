//! Slurm's host lists (`SLURM_JOB_NODELIST`): `node[1-3,7],gpu[01-02]-a` expands to `node1`,
//! `node2`, `node3`, `node7`, `gpu01-a`, `gpu02-a`. A range keeps the zero padding of its
//! first number (`[08-10]`: `08`, `09`, `10`); several bracket groups in one name multiply.
//! Read without asking `scontrol`, so that a batch script needs nothing but the environment.

use std::fmt;

/// The most names one list may expand to (a malformed or hostile list cannot make a daemon
/// allocate without bound; Slurm's largest systems have tens of thousands of nodes).
pub const MAX_HOSTS: usize = 65_536;

/// Why a host list cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostlistError {
    list: String,
    why: String,
}

impl fmt::Display for HostlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host list {:?}: {}", self.list, self.why)
    }
}

impl std::error::Error for HostlistError {}

/// The host names `list` names, in its order, each once.
pub fn expand(list: &str) -> Result<Vec<String>, HostlistError> {
    let err = |why: String| HostlistError { list: list.to_owned(), why };
    let mut out: Vec<String> = Vec::new();
    for item in split_top(list).map_err(err)? {
        let item = item.trim();
        if item.is_empty() {
            return Err(err("an empty name".into()));
        }
        let mut names = vec![String::new()];
        let mut rest = item;
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    if rest.contains(']') {
                        return Err(err(format!("{item:?}: a ] without its [")));
                    }
                    names.iter_mut().for_each(|n| n.push_str(rest));
                    rest = "";
                }
                Some(open) => {
                    let (text, after) = rest.split_at(open);
                    if text.contains(']') {
                        return Err(err(format!("{item:?}: a ] without its [")));
                    }
                    let close = after.find(']').ok_or_else(|| err(format!("{item:?}: a [ without its ]")))?;
                    let numbers = ranges(&after[1..close]).map_err(|why| err(format!("{item:?}: {why}")))?;
                    if names.len().saturating_mul(numbers.len()).saturating_add(out.len()) > MAX_HOSTS {
                        return Err(err(format!("more than {MAX_HOSTS} names")));
                    }
                    names =
                        names.iter().flat_map(|n| numbers.iter().map(move |num| format!("{n}{text}{num}"))).collect();
                    rest = &after[close + 1..];
                }
            }
        }
        for name in names {
            if name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
                return Err(err(format!("{name:?} is not a host name")));
            }
            if !out.contains(&name) {
                out.push(name);
            }
            if out.len() > MAX_HOSTS {
                return Err(err(format!("more than {MAX_HOSTS} names")));
            }
        }
    }
    if out.is_empty() {
        return Err(err("no host".into()));
    }
    Ok(out)
}

/// The list's items: split at commas outside brackets.
fn split_top(list: &str) -> Result<Vec<&str>, String> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0u32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth > 0 => return Err("a [ inside brackets".into()),
            '[' => depth = 1,
            ']' if depth == 0 => return Err("a ] without its [".into()),
            ']' => depth = 0,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err("a [ without its ]".into());
    }
    items.push(&list[start..]);
    Ok(items)
}

/// `1-3,7` or `08-10`: the numbers, as text with their padding.
fn ranges(inside: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in inside.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi) = (lo.trim(), hi.trim());
        let digits = |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("[{inside}]: {part:?} is not a number or a range of numbers"));
        }
        let (a, b): (u64, u64) = (lo.parse().map_err(|_| "a number")?, hi.parse().map_err(|_| "a number")?);
        if a > b {
            return Err(format!("[{inside}]: the range {part:?} goes down"));
        }
        if b - a >= MAX_HOSTS as u64 || out.len() as u64 + (b - a) >= MAX_HOSTS as u64 {
            return Err(format!("[{inside}]: more than {MAX_HOSTS} names"));
        }
        let width = if lo.len() > 1 && lo.starts_with('0') { lo.len() } else { 0 };
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(list: &str) -> Vec<String> {
        expand(list).unwrap()
    }

    #[test]
    fn lists_expand_as_slurm_writes_them() {
        assert_eq!(names("node1"), ["node1"]);
        assert_eq!(names("node[1-3,7]"), ["node1", "node2", "node3", "node7"]);
        assert_eq!(names("gpu[08-10]"), ["gpu08", "gpu09", "gpu10"], "padding kept");
        assert_eq!(names("a[1-2],b,c[5]"), ["a1", "a2", "b", "c5"]);
        assert_eq!(names("r[1-2]n[1-2]-ib"), ["r1n1-ib", "r1n2-ib", "r2n1-ib", "r2n2-ib"]);
        assert_eq!(names("n1,n1,n[1-2]"), ["n1", "n2"], "each once");
        assert_eq!(names(" n[1 - 2] ").len(), 2, "spaces around numbers");
    }

    #[test]
    fn malformed_lists_say_what_is_wrong() {
        for (list, why) in [
            ("", "an empty name"),
            ("a,,b", "an empty name"),
            ("node[1-3", "a [ without its ]"),
            ("node1-3]", "a ] without its ["),
            ("n[[1]]", "a [ inside brackets"),
            ("n[3-1]", "goes down"),
            ("n[a-b]", "not a number"),
            ("n[]", "not a number"),
            ("n[0-99999999]", "more than 65536"),
            ("a[0-9999]b[0-9999]", "more than 65536"),
            ("a/b", "not a host name"),
        ] {
            let e = expand(list).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(&format!("{list:?}")), "{list:?}: {e}");
        }
    }
}
