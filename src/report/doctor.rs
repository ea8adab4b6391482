//! `writeback doctor`'s table: one row per check (check, status, detail, fix), every cell escaped for the
//! terminal, long texts wrapped so that nothing is cut off.

use crate::doctor::Report;
use crate::terminal::{escape, table, Column};

/// The table, then one line with the totals.
pub fn render(report: &Report, width: Option<u16>) -> String {
    // Detail and fix share what is left after the check and status columns and the borders.
    let room = usize::from(width.unwrap_or(140)).saturating_sub(36).max(40);
    let wrap_at = room / 2;
    let columns = [Column::keep("Check"), Column::keep("Status"), Column::keep("Detail"), Column::keep("Fix")];
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| {
            vec![
                wrap(&escape(&c.check), 28),
                c.status.as_str().to_string(),
                wrap(&escape(&c.detail), wrap_at),
                wrap(&escape(&c.fix), wrap_at),
            ]
        })
        .collect();
    let mut out = format!("{}\n", table(&columns, &rows, None));
    let (failed, warned) = (report.failures(), report.warnings());
    out.push_str(&match (failed, warned) {
        (0, 0) => format!("All {} checks pass.\n", report.checks.len()),
        (0, w) => format!("No check fails; {w} warn. Read their fixes.\n"),
        (f, w) => format!("{f} check(s) fail and {w} warn: apply the fixes and run writeback doctor again.\n"),
    });
    out
}

/// `text` broken into lines of at most `width` characters, at spaces where it can be (a longer word, such as a
/// path or an id, keeps its own line whole).
pub fn wrap(text: &str, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Check;

    #[test]
    fn wraps_at_spaces_and_keeps_long_words_whole() {
        assert_eq!(wrap("one two three four", 9), "one two\nthree\nfour");
        assert_eq!(wrap("a 0123456789abcdef b", 6), "a\n0123456789abcdef\nb");
        assert_eq!(wrap("", 5), "");
    }

    #[test]
    fn escapes_every_cell_and_counts() {
        let report = Report {
            checks: vec![
                Check::pass("config", "x.toml"),
                Check::fail("group \u{1b}[31mEvil", "dynamic \u{202e}", "pick another"),
            ],
        };
        let text = render(&report, Some(100));
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text}");
        assert!(text.contains("1 check(s) fail and 0 warn"), "{text}");
    }
}
