//! `--key value` arguments, without a dependency.

use std::collections::HashMap;
use std::str::FromStr;

/// Parsed `--key value` pairs plus the positional arguments, in order.
#[derive(Debug, Default)]
pub struct Args {
    flags: HashMap<String, String>,
    /// Arguments not starting with `--`.
    pub positional: Vec<String>,
}

impl Args {
    /// Parses `args` (without the program name). A flag followed by another
    /// flag, or last, gets the value `"true"`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut out = Args::default();
        let mut it = args.into_iter().peekable();
        while let Some(arg) = it.next() {
            if let Some(key) = arg.strip_prefix("--") {
                let value = match it.peek() {
                    Some(next) if !next.starts_with("--") => it.next().unwrap(),
                    _ => "true".to_owned(),
                };
                out.flags.insert(key.to_owned(), value);
            } else {
                out.positional.push(arg);
            }
        }
        out
    }

    /// The value of `--key`, parsed, or `default`. Exits with a message on
    /// a value that does not parse.
    pub fn get<T: FromStr>(&self, key: &str, default: T) -> T {
        match self.flags.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("bad value for --{key}: {v}");
                std::process::exit(2)
            }),
        }
    }

    /// The value of `--key`, if given.
    pub fn opt<T: FromStr>(&self, key: &str) -> Option<T> {
        self.flags.get(key).map(|v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("bad value for --{key}: {v}");
                std::process::exit(2)
            })
        })
    }

    /// The raw string of `--key`, if given.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.flags.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_positionals() {
        let a = Args::parse(
            ["echo", "--conns", "10", "--quiet", "--size", "32", "x"].map(String::from),
        );
        assert_eq!(a.positional, ["echo", "x"]);
        assert_eq!(a.get("conns", 0usize), 10);
        assert_eq!(a.get("size", 0usize), 32);
        assert_eq!(a.str("quiet"), Some("true"));
        assert_eq!(a.get("missing", 7u32), 7);
    }
}
