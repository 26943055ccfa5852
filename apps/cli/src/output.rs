//! Printing: JSON for scripts (`--json`, the API's own types), aligned columns for people.

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// One thing: its JSON, or the line `human` writes.
    pub fn show<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            say!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            say!("{}", human());
        }
    }

    /// A list: its JSON, or a table with `headers` and a row per item.
    pub fn table<T: Serialize>(&self, items: &[T], headers: &[&str], row: impl Fn(&T) -> Vec<String>) {
        if self.json {
            say!("{}", serde_json::to_string_pretty(items).unwrap_or_default());
            return;
        }
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        say_raw!("{}", columns(headers, &rows));
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub fn columns(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let t = super::columns(
            &["NAME", "PUBLIC"],
            &[vec!["acme".into(), "yes".into()], vec!["a".into(), "no".into()]],
        );
        assert_eq!(t, "NAME  PUBLIC\nacme  yes\na     no\n");
    }
}
