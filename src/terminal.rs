//! What reaches a terminal: the one path output takes to stdout and stderr, the width tables are laid out for,
//! and the escaping of every string that comes from outside (a plan, an input file, Graph, PoliteMail, an error
//! body) before it is printed.
//!
//! Output goes through [`out!`](crate::out)/[`outln!`](crate::outln) (stdout) and
//! [`eout!`](crate::eout)/[`eoutln!`](crate::eoutln) (stderr), never `crate::outln!`: those panic when the reader
//! has gone away (`writeback show plan.json | head -1`). Here a closed pipe only stops the output: the command
//! finishes what it was doing (an apply still journals its writes) and exits quietly.
//!
//! A plan is attacker-controlled text until its signature is checked, and even a signed plan carries names typed
//! by people and services. Printed raw, a control sequence in a UPN can move the cursor, erase rows of a review
//! table or retitle the window; a bidirectional override can make `evil` read as `live`. [`escape`] turns each
//! such character into a visible escape, so the screen shows exactly what the bytes say.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);
static STDOUT_FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes to stdout through [`write_stdout`]; `print!` that never panics.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::terminal::write_stdout(format_args!($($arg)*)) };
}

/// Writes a line to stdout through [`write_stdout`]; `crate::outln!` that never panics.
#[macro_export]
macro_rules! outln {
    () => { $crate::terminal::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::terminal::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to stderr through [`write_stderr`]; `eprint!` that never panics.
#[macro_export]
macro_rules! eout {
    ($($arg:tt)*) => { $crate::terminal::write_stderr(format_args!($($arg)*)) };
}

/// Writes a line to stderr through [`write_stderr`]; `crate::eoutln!` that never panics.
#[macro_export]
macro_rules! eoutln {
    () => { $crate::terminal::write_stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::terminal::write_stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes `args` to stdout and flushes. When the reader has closed the pipe, this and every later write is
/// dropped quietly ([`stdout_closed`] turns true); any other failure (a full disk) is kept for
/// [`stdout_failure`] and later writes are dropped too.
pub fn write_stdout(args: fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let text = render(args);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(escape_stream(&text).as_bytes()).and_then(|()| out.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            if let Ok(mut failed) = STDOUT_FAILED.lock() {
                failed.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Writes `args` to stderr; a closed or failing stderr drops this and every later write quietly.
pub fn write_stderr(args: fmt::Arguments<'_>) {
    if STDERR_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let text = render(args);
    let mut err = std::io::stderr().lock();
    if err.write_all(escape_stream(&text).as_bytes()).and_then(|()| err.flush()).is_err() {
        STDERR_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// True once a write to stdout failed (the reader closed the pipe, or worse); later output is dropped.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Why writing to stdout failed, when it was not a closed pipe (that one is not a failure: the reader has read
/// what it wanted).
pub fn stdout_failure() -> Option<String> {
    STDOUT_FAILED.lock().ok().and_then(|failed| failed.clone())
}

/// True for the characters that must never reach a terminal raw: C0 controls, DEL, C1 controls, and the
/// bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069).
pub fn is_unsafe(c: char) -> bool {
    matches!(c as u32, 0x00..=0x1f | 0x7f..=0x9f | 0x202a..=0x202e | 0x2066..=0x2069)
}

/// `text` with every unsafe character ([`is_unsafe`]) replaced by a visible escape: `\n`, `\r`, `\t`, `\xNN` for
/// the other C0 and C1 controls and DEL, `\u{NNNN}` for the bidirectional controls. Borrowed when nothing needs
/// escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !is_unsafe(c) {
            out.push(c);
            continue;
        }
        let _ = match c {
            '\n' => out.write_str("\\n"),
            '\r' => out.write_str("\\r"),
            '\t' => out.write_str("\\t"),
            c if (c as u32) < 0x100 => write!(out, "\\x{:02x}", c as u32),
            c => write!(out, "\\u{{{:04x}}}", c as u32),
        };
    }
    Cow::Owned(out)
}

/// The text of `args`, borrowed when it is a plain string.
fn render(args: fmt::Arguments<'_>) -> Cow<'static, str> {
    match args.as_str() {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(args.to_string()),
    }
}

/// The last line of defence, applied to everything written through [`write_stdout`] and [`write_stderr`]: every
/// unsafe character ([`is_unsafe`]) except the line feed becomes `\uXXXX`. That is a visible escape on a terminal
/// and, inside a JSON string, the JSON escape of the same character, so `--json` output stays valid and means
/// what it meant (serde_json writes bidirectional controls and C1 characters raw). Strings from outside should
/// still go through [`escape`] where they are placed, so that a line feed in them is shown too.
pub fn escape_stream(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\n' || !is_unsafe(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// A string shown through [`escape`] when formatted: `format!("user {}", Escaped(&upn))`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// The width tables on stdout are laid out for: `COLUMNS` when it is set, else the terminal's width when stdout
/// is a terminal, else `None`: output that goes to a file or a pipe is never shortened.
pub fn table_width() -> Option<u16> {
    width_for(std::io::stdout().is_terminal())
}

/// Like [`table_width`], for tables on stderr (`apply --json` shows its review there).
pub fn stderr_table_width() -> Option<u16> {
    width_for(std::io::stderr().is_terminal())
}

fn width_for(is_terminal: bool) -> Option<u16> {
    let columns = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<u16>().ok()).filter(|w| *w > 0);
    columns.or_else(|| is_terminal.then(|| terminal_size::terminal_size().map(|(w, _)| w.0)).flatten())
}

/// How a table column behaves when the table is wider than the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Never shortened nor split: ids, UPNs, e-mail addresses, counts, line numbers.
    Keep,
    /// Shortened (ending in `…`) when the table is too wide; the column with the lowest number goes first.
    Shorten(u8),
}

/// A column of a [`table`]: its title, how it fits, and whether its cells are numbers (right-aligned).
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    /// The header.
    pub title: &'a str,
    /// What happens to it when the table is too wide.
    pub fit: Fit,
    /// Right-aligned (numbers).
    pub right: bool,
}

impl<'a> Column<'a> {
    /// A column that is never shortened (ids, UPNs, addresses).
    pub const fn keep(title: &'a str) -> Self {
        Column { title, fit: Fit::Keep, right: false }
    }

    /// A column of numbers: never shortened, right-aligned.
    pub const fn number(title: &'a str) -> Self {
        Column { title, fit: Fit::Keep, right: true }
    }

    /// A column that is shortened when the table is too wide; lower `rank`s are shortened first.
    pub const fn shorten(title: &'a str, rank: u8) -> Self {
        Column { title, fit: Fit::Shorten(rank), right: false }
    }
}

/// A shortened column keeps at least this many characters (or its whole content, when shorter).
const MIN_SHORTENED: usize = 8;

/// A table of `rows` under `columns`, drawn with the house's borders. No cell is ever wrapped, so an id or a UPN
/// is never split across lines (a cell may hold several lines of its own). When `width` is given (see
/// [`table_width`]) and the table is wider, the [`Fit::Shorten`] columns are cut to fit, the lowest rank first,
/// each cell ending in `…`; [`Fit::Keep`] columns never are, so a table of long UPNs may stay wider than
/// `width`. Without a width (not a terminal), nothing is shortened.
pub fn table(columns: &[Column<'_>], rows: &[Vec<String>], width: Option<u16>) -> comfy_table::Table {
    let mut widths: Vec<usize> = columns.iter().map(|c| widest_line(c.title)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(widest_line(cell));
        }
    }
    if let Some(limit) = width {
        // Each column adds a border and a space either side; the table has one more border.
        let drawn = widths.iter().sum::<usize>() + 3 * columns.len() + 1;
        let mut excess = drawn.saturating_sub(usize::from(limit));
        let mut order: Vec<(u8, usize)> = columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.fit {
                Fit::Shorten(rank) => Some((rank, i)),
                Fit::Keep => None,
            })
            .collect();
        order.sort();
        for (_, i) in order {
            let floor = MIN_SHORTENED.min(widths[i]);
            let cut = (widths[i] - floor).min(excess);
            widths[i] -= cut;
            excess -= cut;
        }
    }
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    let cell = |text: &str, i: usize| {
        let cell = comfy_table::Cell::new(shorten_lines(text, widths[i]));
        if columns[i].right {
            cell.set_alignment(comfy_table::CellAlignment::Right)
        } else {
            cell
        }
    };
    table.set_header(columns.iter().enumerate().map(|(i, c)| cell(c.title, i)).collect::<Vec<_>>());
    for row in rows {
        table.add_row(row.iter().enumerate().take(columns.len()).map(|(i, text)| cell(text, i)).collect::<Vec<_>>());
    }
    table
}

/// The display width of the widest line of `text`.
fn widest_line(text: &str) -> usize {
    text.lines().map(unicode_width::UnicodeWidthStr::width).max().unwrap_or(0)
}

/// Each line of `text` cut to `width` display columns, ending in `…` where it was cut.
fn shorten_lines(text: &str, width: usize) -> String {
    text.lines().map(|line| shorten(line, width)).collect::<Vec<_>>().join("\n")
}

/// `line` cut to `width` display columns, ending in `…` when it was cut.
pub fn shorten(line: &str, width: usize) -> Cow<'_, str> {
    use unicode_width::UnicodeWidthChar;
    if unicode_width::UnicodeWidthStr::width(line) <= width {
        return Cow::Borrowed(line);
    }
    let mut out = String::new();
    let mut used = 0;
    for c in line.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    Cow::Owned(out)
}

/// Asks `question` on stderr and reads one line of the answer from stdin, trimmed.
pub fn ask(question: &str) -> crate::Result<String> {
    use std::io::{BufRead, Write};
    crate::eout!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| crate::Error::Internal(format!("cannot read the answer: {e}")))?;
    Ok(answer.trim().to_string())
}

/// A progress bar of `total` steps on stderr, drawn with `template` (indicatif's syntax), when stderr is a
/// terminal; a hidden one otherwise, so logs and pipes get no control sequences.
pub fn progress_bar(total: u64, template: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rows: &[&[&str]]) -> Vec<Vec<String>> {
        rows.iter().map(|r| r.iter().map(|c| c.to_string()).collect()).collect()
    }

    const UPN: &str = "a.very.long.user.principal.name.that.goes.on@subsidiary.contoso.example";

    #[test]
    fn a_narrow_terminal_shortens_the_least_important_column_and_never_splits_an_upn() {
        let columns = [Column::keep("User (UPN)"), Column::shorten("Name", 1), Column::shorten("Notes", 2)];
        let data = rows(&[&[UPN, "Alexandra Long-Surname-Double-Barrelled", "GUEST, via proxy address"]]);
        let text = table(&columns, &data, Some(120)).to_string();
        for line in text.lines() {
            assert!(line.chars().count() <= 120, "too wide: {line}");
        }
        assert_eq!(text.lines().count(), 5, "one line per row:\n{text}");
        assert!(text.contains(UPN), "the UPN is whole:\n{text}");
        assert!(text.contains("GUEST, via proxy address"), "the notes outrank the name:\n{text}");
        assert!(text.contains("Alexandra Long…"), "the name is shortened:\n{text}");
        assert!(text.lines().any(|l| l.chars().count() == 120), "the table uses the whole width:\n{text}");
    }

    #[test]
    fn keep_columns_stay_whole_even_when_the_table_cannot_fit() {
        let columns = [Column::keep("Entry"), Column::shorten("Detail", 1)];
        let data = rows(&[&[UPN, "no user has this address"]]);
        let text = table(&columns, &data, Some(40)).to_string();
        assert!(text.contains(UPN), "{text}");
        assert!(text.contains("no user…"), "the detail keeps its minimum: {text}");
    }

    #[test]
    fn without_a_width_nothing_is_shortened_or_wrapped() {
        let columns = [Column::keep("User (UPN)"), Column::shorten("Name", 1), Column::number("Line")];
        let name = "N".repeat(300);
        let text = table(&columns, &rows(&[&[UPN, &name, "7"]]), None).to_string();
        assert!(text.contains(&name) && text.contains(UPN), "{text}");
        assert_eq!(text.lines().count(), 5, "{text}");
    }

    #[test]
    fn columns_overrides_and_no_terminal_means_no_width() {
        // COLUMNS is read by width_for; only its absence is checked here, so the test does not race others.
        if std::env::var_os("COLUMNS").is_none() {
            assert_eq!(width_for(false), None);
        }
        assert_eq!(shorten("abcdefghij", 5), "abcd…");
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("日本語テキスト", 7), "日本語…");
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(escape("bob@contoso.com Ünïcödé"), Cow::Borrowed(_)));
    }

    #[test]
    fn control_sequences_become_visible() {
        let upn = "bob@x\u{1b}[31m\u{1b}[1A\u{1b}[2K\u{1b}]0;pwned\u{7}";
        assert_eq!(escape(upn), "bob@x\\x1b[31m\\x1b[1A\\x1b[2K\\x1b]0;pwned\\x07");
        assert_eq!(escape("a\nb\tc\rd\u{7f}e\u{9b}f"), "a\\nb\\tc\\rd\\x7fe\\x9bf");
    }

    #[test]
    fn bidi_overrides_become_visible() {
        assert_eq!(escape("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
        assert_eq!(escape("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(format!("{}", Escaped("a\u{202a}")), "a\\u{202a}");
    }

    #[test]
    fn nothing_unsafe_survives() {
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let shown = escape(&c.to_string()).into_owned();
            assert!(!shown.chars().any(is_unsafe), "{c:?} -> {shown:?}");
        }
    }

    #[test]
    fn the_output_stream_keeps_lines_and_json_and_escapes_the_rest() {
        let text = "row 1 \u{1b}[1A\u{1b}[2K\u{7}\trow\r\n\u{202e}evil\u{85}\n";
        assert_eq!(escape_stream(text), "row 1 \\u001b[1A\\u001b[2K\\u0007\\u0009row\\u000d\n\\u202eevil\\u0085\n");
        assert!(matches!(escape_stream("plain\nlines\n"), Cow::Borrowed(_)));
        // JSON as serde_json writes it (C0 escaped, bidi and C1 raw) stays valid and means the same.
        let value = serde_json::json!({ "upn": "bob@x\u{1b}[31m\u{202e}\u{9b}" });
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let shown = escape_stream(&pretty);
        assert!(!shown.chars().any(|c| c != '\n' && is_unsafe(c)), "{shown}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).unwrap(), value);
    }
}
