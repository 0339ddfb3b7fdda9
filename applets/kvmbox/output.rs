//! `--format table|json|yaml|csv`: the same data for people and for scripts.

use std::fmt::Write;

use serde_json::Value;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
    Yaml,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "yaml" => Ok(Format::Yaml),
            "csv" => Ok(Format::Csv),
            _ => Err(format!(
                "unknown format {s:?}: use table, json, yaml or csv"
            )),
        }
    }
}

/// The value at `path` in `v` as a table cell: a string bare, anything
/// missing or null empty.
pub(crate) fn text(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = cur.get(p).unwrap_or(&Value::Null);
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Prints `raw` as JSON or YAML, or `rows` under `headers` as a table or CSV.
pub(crate) fn print(format: Format, raw: &Value, headers: &[&str], rows: &[Vec<String>]) {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(raw).unwrap_or_default() + "\n",
        Format::Yaml => yaml(raw),
        Format::Csv => csv(headers, rows),
        Format::Table => table(headers, rows),
    };
    print!("{text}");
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let heads: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&heads).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn csv(headers: &[&str], rows: &[Vec<String>]) -> String {
    let field = |f: &str| {
        if f.contains([',', '"', '\n', '\r']) || f.starts_with(' ') || f.ends_with(' ') {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_string()
        }
    };
    let mut out = String::new();
    let heads: Vec<String> = headers.iter().map(|h| h.to_lowercase()).collect();
    for row in std::iter::once(&heads).chain(rows) {
        let line: Vec<String> = row.iter().map(|c| field(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// A small YAML emitter for JSON values: block style, every string
/// double-quoted with JSON escapes (valid YAML 1.2, and immune to YAML's
/// implicit typing of `no`, `1e3`, `~`…). No YAML crate that is both small and
/// maintained exists, and this is all the output needs.
pub(crate) fn yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => yaml_block(v, 0, &mut out),
        Value::Array(a) if !a.is_empty() => yaml_block(v, 0, &mut out),
        _ => {
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
    out
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn yaml_block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                let key = scalar(&Value::String(k.clone()));
                if is_block(val) {
                    let _ = writeln!(out, "{pad}{key}:");
                    yaml_block(val, indent + 2, out);
                } else {
                    let _ = writeln!(out, "{pad}{key}: {}", scalar(val));
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                if is_block(item) {
                    let _ = writeln!(out, "{pad}-");
                    yaml_block(item, indent + 2, out);
                } else {
                    let _ = writeln!(out, "{pad}- {}", scalar(item));
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_quotes_every_string() {
        let v = json!({"a": "no", "b": [1, {"c": "x\ny"}, []], "d": {}, "e": null, "f": true});
        assert_eq!(
            yaml(&v),
            "\"a\": \"no\"\n\"b\":\n  - 1\n  -\n    \"c\": \"x\\ny\"\n  - []\n\"d\": {}\n\"e\": null\n\"f\": true\n"
        );
        assert_eq!(yaml(&json!([])), "[]\n");
    }

    #[test]
    fn csv_and_table() {
        let rows = vec![
            vec!["a,b".to_string(), "q\"".to_string()],
            vec!["x".into(), "".into()],
        ];
        assert_eq!(
            csv(&["NAME", "V"], &rows),
            "name,v\n\"a,b\",\"q\"\"\"\nx,\n"
        );
        assert_eq!(table(&["NAME", "V"], &rows), "NAME  V\na,b   q\"\nx\n");
    }
}
