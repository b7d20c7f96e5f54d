//! Aligned text tables for people (`certmint admin … list`).
//!
//! Invariants: every cell is one line of printable text (control characters
//! from the server, such as newlines or terminal escape sequences in a
//! policy description, are shown escaped, never interpreted); columns are
//! as wide as their widest cell in characters, separated by two spaces;
//! lines carry no trailing spaces.

use std::fmt::Write as _;

/// A table: a header row and data rows of the same width.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|cell| printable(cell)).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank and extra cells are dropped,
    /// so a row can never shift the columns after it.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut row: Vec<String> = cells
            .iter()
            .take(self.header.len())
            .map(|cell| printable(cell))
            .collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|cell| width(cell)).collect();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate() {
                widths[column] = widths[column].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                let _ = write!(line, "{cell:<width$}", width = widths[column]);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines for one record (`show` commands), keys aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let key_width = pairs.iter().map(|(key, _)| width(key)).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let line = format!(
            "{:<key_width$}  {}",
            format!("{key}:"),
            printable(value),
            key_width = key_width + 1
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The cell as one printable line: control characters are escaped.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn width(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_columns_align_to_the_widest_cell() {
        let mut table = Table::new(&["NAME", "VERSION", "DESCRIPTION"]);
        table.row(vec!["payments-api".into(), "12".into(), "east-west".into()]);
        table.row(vec!["db".into(), "1".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME          VERSION  DESCRIPTION\n\
             payments-api  12       east-west\n\
             db            1\n"
        );
    }

    #[test]
    fn ok_width_counts_characters_not_bytes() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["ééé".into(), "x".into()]);
        table.row(vec!["abcd".into(), "y".into()]);
        assert_eq!(table.render(), "A     B\nééé   x\nabcd  y\n");
    }

    #[test]
    fn ok_short_and_long_rows_keep_the_columns() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["1".into()]);
        table.row(vec!["2".into(), "3".into(), "dropped".into()]);
        assert_eq!(table.render(), "A  B\n1\n2  3\n");
    }

    #[test]
    fn fail_control_characters_cannot_break_lines_or_drive_the_terminal() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["line\nbreak".into(), "\u{1b}[31mred".into()]);
        let text = table.render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains("line\\nbreak"));
    }

    #[test]
    fn ok_key_values_align_keys() {
        assert_eq!(
            key_values(&[("name", "web".into()), ("version", "3".into())]),
            "name:     web\nversion:  3\n"
        );
    }
}
