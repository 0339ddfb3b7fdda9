//! LXD's `api_filtering` extension: `?filter=` on list endpoints, a
//! boolean expression of `FIELD eq|ne VALUE` terms joined by `and`/`or`
//! (`and` binds tighter), with `not` before a term. FIELD is a dotted path
//! into each listed object (`name`, `status`, `config.image.os`); VALUE may
//! be double-quoted. This is the subset `lxc` sends; anything else is
//! refused rather than half understood.

use serde_json::Value;

use crate::fault::{Blame, Fault};

/// A filter refused; the caller reads it on its own, as the answer to a
/// list, so it says what it is about.
#[derive(PartialEq, Eq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub(crate) struct Error(Why);

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        Fault::Input
    }
}

/// What is wrong with a filter: part of [`Error`]'s message, not an error
/// of its own.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Why {
    #[error("longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("unterminated quote")]
    Unterminated,
    #[error("`not` needs a term")]
    NoTerm,
    #[error("no operator after {0:?}")]
    NoOperator(String),
    #[error("unsupported operator {0:?}")]
    Operator(String),
    #[error("no value after {0}")]
    NoValue(String),
    #[error("expected and/or, not {0:?}")]
    Junction(String),
}

/// The longest filter taken, decoded.
const MAX_LEN: usize = 1024;

/// One `FIELD op VALUE` term.
#[derive(Debug, PartialEq, Eq)]
struct Term {
    field: String,
    equal: bool,
    value: String,
    negate: bool,
}

/// A parsed filter: alternatives (`or`) of conjunctions (`and`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Filter(Vec<Vec<Term>>);

fn tokens(text: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' || c == '+' {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut t = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(ch) => t.push(ch),
                    None => return Err(Error(Why::Unterminated)),
                }
            }
            out.push(t);
        } else {
            let mut t = String::new();
            while let Some(&ch) = chars.peek() {
                if ch == ' ' || ch == '+' {
                    break;
                }
                t.push(ch);
                chars.next();
            }
            out.push(t);
        }
    }
    Ok(out)
}

pub(crate) fn unescape(q: &str) -> String {
    // `lxc` URL-encodes the query; `%20` and friends arrive here still encoded.
    let b = q.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Filter {
    /// Parses a (still URL-encoded) filter; the empty filter keeps everything.
    pub(crate) fn parse(raw: &str) -> Result<Filter, Error> {
        let text = unescape(raw);
        if text.len() > MAX_LEN {
            return Err(Error(Why::TooLong));
        }
        let toks = tokens(&text)?;
        let mut alts = Vec::new();
        let mut conj = Vec::new();
        let mut it = toks.into_iter();
        while let Some(mut field) = it.next() {
            let negate = field == "not";
            if negate {
                field = it.next().ok_or(Error(Why::NoTerm))?;
            }
            let Some(op) = it.next() else {
                return Err(Error(Why::NoOperator(field)));
            };
            let equal = match op.as_str() {
                "eq" => true,
                "ne" => false,
                _ => return Err(Error(Why::Operator(op))),
            };
            let value = it.next().ok_or(Error(Why::NoValue(op)))?;
            conj.push(Term {
                field,
                equal,
                value,
                negate,
            });
            match it.next().as_deref() {
                None => break,
                Some("and") => {}
                Some("or") => alts.push(std::mem::take(&mut conj)),
                Some(other) => return Err(Error(Why::Junction(other.to_string()))),
            }
        }
        if !conj.is_empty() {
            alts.push(conj);
        }
        Ok(Filter(alts))
    }

    fn matches(&self, v: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.0.iter().any(|conj| {
            conj.iter().all(|t| {
                let got = t
                    .field
                    .split('.')
                    .try_fold(v, |cur, k| cur.get(k))
                    .map(|x| match x {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                let eq = got.is_some_and(|g| g.eq_ignore_ascii_case(&t.value));
                (eq == t.equal) != t.negate
            })
        })
    }

    /// Keeps the elements of a JSON array that match.
    pub(crate) fn apply(&self, list: Value) -> Value {
        match list {
            Value::Array(a) => Value::Array(a.into_iter().filter(|v| self.matches(v)).collect()),
            other => other,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lxc_filters() {
        let list = json!([
            {"name": "a", "status": "Running", "config": {"image.os": "x"}},
            {"name": "b", "status": "Stopped"},
        ]);
        let names = |f: &str| -> Vec<String> {
            Filter::parse(f)
                .unwrap()
                .apply(list.clone())
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(""), ["a", "b"]);
        assert_eq!(names("status eq running"), ["a"]);
        assert_eq!(names("name%20eq%20b"), ["b"]);
        assert_eq!(names("name eq a or name eq b"), ["a", "b"]);
        assert_eq!(
            names("name eq a and status eq Stopped"),
            Vec::<String>::new()
        );
        assert_eq!(names("not name eq a"), ["b"]);
        assert_eq!(names("name ne \"a\""), ["b"]);
        for (bad, why) in [
            ("name", Error(Why::NoOperator("name".into()))),
            ("name gt 1", Error(Why::Operator("gt".into()))),
            ("name eq", Error(Why::NoValue("eq".into()))),
            ("name eq a xor b", Error(Why::Junction("xor".into()))),
            ("name eq \"a", Error(Why::Unterminated)),
            ("not", Error(Why::NoTerm)),
        ] {
            assert_eq!(Filter::parse(bad), Err(why), "{bad}");
        }
        let long = format!("name eq {}", "a".repeat(MAX_LEN));
        assert_eq!(Filter::parse(&long), Err(Error(Why::TooLong)));
        assert_eq!(
            Filter::parse("name").unwrap_err().to_string(),
            "invalid filter: no operator after \"name\""
        );
    }
}
