//! Reading the CSV files people export from PoliteMail and the Entra admin center.
//!
//! One reader for all of them, because they share the same troubles: Excel adds a byte-order mark or saves with
//! `;` in some locales, headers change spelling between portal versions, and a stray quote can swallow half a file.
//!
//! - The file is read whole (its SHA-256 goes into the plan), checked to be UTF-8 (with or without a BOM), and
//!   refused early when it is absurd: empty, UTF-16, a line longer than [`MAX_LINE_BYTES`], a file larger than
//!   [`MAX_FILE_BYTES`].
//! - The delimiter (`,`, `;` or tab) is sniffed from the header line, outside quotes. An Excel `sep=;` first line
//!   is honoured.
//! - Headers are matched ignoring case, spaces and punctuation (`First Name` = `first_name` = `FirstName`).
//! - Rows are read into one reused [`csv::ByteRecord`]; cells are borrowed `&str`, so a reader allocates only what
//!   it keeps. Each row knows the line it starts on (the header is line 1), and errors name file, line and column.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The largest file accepted (2 GiB). The biggest real exports (1 million rows) are around 200 MB.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// The longest physical line accepted (10 MiB). Real rows are a few hundred bytes.
pub const MAX_LINE_BYTES: usize = 10 << 20;

/// The longest record accepted (10 MiB, quotes included): a longer one is almost always an opening quote that was
/// never closed, which makes the rest of the file one cell.
pub const MAX_RECORD_BYTES: usize = 10 << 20;

/// The most columns accepted in a header.
pub const MAX_COLUMNS: usize = 4096;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A CSV file held in memory, with its header parsed and its delimiter known.
#[derive(Debug)]
pub struct Table {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Where the CSV text starts in `bytes` (after a BOM and an Excel `sep=` line).
    body_start: usize,
    /// The physical line the CSV text starts on, minus one (1 when a `sep=` line was skipped).
    line_offset: u64,
    delimiter: u8,
    headers: Vec<String>,
    keys: Vec<String>,
    header_line: u64,
    sha256: String,
}

impl Table {
    /// Reads and checks the file at `path`.
    pub fn open(path: &Path) -> Result<Table> {
        let meta = std::fs::metadata(path).map_err(|e| Error::read(path, e))?;
        if meta.is_dir() {
            return Err(Error::input(path, "this is a folder; give the path of a CSV file"));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(Error::input(
                path,
                format!(
                    "the file is {} MB, more than the {} MB writeback reads; is this the right file?",
                    meta.len() >> 20,
                    MAX_FILE_BYTES >> 20
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
        Table::from_bytes(bytes, path)
    }

    /// Checks `bytes` as the content of a CSV file; `name` is used in messages (usually the path it came from).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>, name: &Path) -> Result<Table> {
        let bytes = bytes.into();
        let path = name.to_path_buf();
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(Error::input(&path, format!("the data is larger than {} MB", MAX_FILE_BYTES >> 20)));
        }
        let sha256 = crate::plan::precondition::sha256_hex(&bytes);
        if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
            return Err(Error::input(
                &path,
                "the file is UTF-16 text (Excel's \"Unicode Text\"); save it as \"CSV UTF-8 (Comma delimited)\" \
                 and try again",
            ));
        }
        check_utf8(&bytes, &path)?;
        check_line_lengths(&bytes, &path)?;

        let mut body_start = if bytes.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { 0 };
        if bytes.get(body_start..).is_none_or(|rest| rest.iter().all(u8::is_ascii_whitespace)) {
            return Err(Error::input(
                &path,
                "the file is empty; expected a header line (such as 'Email,First Name,Last Name') and one row per \
                 entry",
            ));
        }

        // Excel's "sep=;" hint line names the delimiter and is not part of the data.
        let mut line_offset = 0;
        let mut delimiter = None;
        let first_line = first_line(&bytes[body_start..]);
        let trimmed = first_line.trim_ascii();
        if trimmed.len() == 5 && trimmed[..4].eq_ignore_ascii_case(b"sep=") {
            delimiter = Some(trimmed[4]);
            body_start += first_line.len();
            line_offset = 1;
            if bytes.get(body_start) == Some(&b'\n') {
                body_start += 1;
            }
        }
        let body = &bytes[body_start..];
        let delimiter = match delimiter {
            Some(d) => d,
            None => sniff_delimiter(body),
        };

        let mut table = Table {
            path,
            bytes: Vec::new(),
            body_start,
            line_offset,
            delimiter,
            headers: Vec::new(),
            keys: Vec::new(),
            header_line: 1,
            sha256,
        };

        // Read the header: the first record that is not blank.
        let mut reader = reader_for(body, delimiter);
        let mut record = csv::ByteRecord::new();
        let mut lines = LineCounter::default();
        loop {
            if !read_record(&mut reader, &mut record, &table.path)? {
                return Err(Error::input(&table.path, "the file has no header line"));
            }
            if !is_blank(&record) {
                break;
            }
        }
        table.header_line = lines.start_line(body, &record) + line_offset;
        if record.len() > MAX_COLUMNS {
            return Err(table.error_at(
                table.header_line,
                format!("the header has {} columns, more than the {MAX_COLUMNS} writeback reads", record.len()),
            ));
        }
        for cell in record.iter() {
            // UTF-8 was checked for the whole file above, so this cannot fail; the fallback keeps it panic-free.
            let text = std::str::from_utf8(cell).unwrap_or_default().trim().trim_start_matches('\u{feff}');
            table.headers.push(text.to_string());
            table.keys.push(header_key(text));
        }
        table.bytes = bytes;
        Ok(table)
    }

    /// The file name used in messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 (hex) of the file's raw bytes, BOM included: what the plan records as this input.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The delimiter in use: `b','`, `b';'` or `b'\t'`.
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    /// The header cells, trimmed, in file order.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The line the header is on (1 unless the file starts with blank lines or a `sep=` line).
    pub fn header_line(&self) -> u64 {
        self.header_line
    }

    /// The index of the first column whose header matches one of `aliases`, trying the aliases in order.
    /// Matching ignores case, spaces and punctuation: `Email Address`, `email_address` and `EmailAddress` are one.
    pub fn column(&self, aliases: &[&str]) -> Option<usize> {
        aliases.iter().find_map(|alias| {
            let key = header_key(alias);
            self.keys.iter().position(|k| !k.is_empty() && *k == key)
        })
    }

    /// Like [`Table::column`], but a missing column is an error that lists the accepted names and the header as
    /// found, and two columns that both match are an error too. `what` names the column for people ("e-mail").
    pub fn require_column(&self, aliases: &[&str], what: &str) -> Result<usize> {
        match self.optional_column(aliases, what)? {
            Some(index) => Ok(index),
            None => Err(self.error_at(
                self.header_line,
                format!(
                    "no {what} column: expected one of {}; the header has {}",
                    quoted_list(aliases.iter().copied()),
                    self.header_summary()
                ),
            )),
        }
    }

    /// Like [`Table::column`], but two different columns that both match are an error rather than a guess.
    pub fn optional_column(&self, aliases: &[&str], what: &str) -> Result<Option<usize>> {
        let alias_keys: Vec<String> = aliases.iter().map(|a| header_key(a)).collect();
        let matches: Vec<usize> =
            (0..self.keys.len()).filter(|&i| self.keys.get(i).is_some_and(|k| alias_keys.contains(k))).collect();
        if let [first, second, ..] = matches.as_slice() {
            return Err(self.error_at(
                self.header_line,
                format!(
                    "two columns could be the {what}: '{}' (column {}) and '{}' (column {}); rename or delete one",
                    self.header_name(*first),
                    first + 1,
                    self.header_name(*second),
                    second + 1
                ),
            ));
        }
        Ok(self.column(aliases))
    }

    /// The column whose header is exactly `name`, ignoring case and surrounding spaces (for a column the user
    /// named on the command line).
    pub fn exact_column(&self, name: &str) -> Option<usize> {
        let wanted = name.trim().to_lowercase();
        self.headers.iter().position(|h| h.to_lowercase() == wanted)
    }

    /// The header text of column `index` (empty when out of range).
    pub fn header_name(&self, index: usize) -> &str {
        self.headers.get(index).map(String::as_str).unwrap_or_default()
    }

    /// The header, quoted and comma-separated, for messages.
    pub fn header_summary(&self) -> String {
        let named: Vec<&str> = self.headers.iter().map(String::as_str).filter(|h| !h.is_empty()).collect();
        if named.is_empty() {
            "no column names".to_string()
        } else {
            quoted_list(named.into_iter())
        }
    }

    /// An input error at `line` of this file.
    pub fn error_at(&self, line: u64, message: impl Into<String>) -> Error {
        Error::input_at(&self.path, line, message)
    }

    /// An input error at `line`, column `index` of this file: `file:line: column 'Email': message`.
    pub fn cell_error(&self, line: u64, index: usize, message: impl Into<String>) -> Error {
        Error::Input {
            location: format!("{}:{line}: column '{}'", self.path.display(), self.header_name(index)),
            message: message.into(),
        }
    }

    /// The data rows, after the header. Entirely blank rows (`,,,` or empty lines) are skipped.
    pub fn rows(&self) -> Rows<'_> {
        let body = self.bytes.get(self.body_start..).unwrap_or_default();
        let mut rows = Rows {
            table: self,
            body,
            reader: reader_for(body, self.delimiter),
            record: csv::ByteRecord::new(),
            lines: LineCounter::default(),
            header_done: false,
        };
        // Pre-size the record for the header's width, so the first rows do not reallocate.
        rows.record = csv::ByteRecord::with_capacity(256, self.headers.len());
        rows
    }

    /// The number of data rows (reads the whole file; for tests and progress estimates).
    pub fn count_rows(&self) -> Result<u64> {
        let mut rows = self.rows();
        let mut n = 0;
        while rows.next_row()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// A cursor over a [`Table`]'s data rows. Each row borrows the cursor's buffer, so use it as
/// `while let Some(row) = rows.next_row()? { … }`.
pub struct Rows<'t> {
    table: &'t Table,
    body: &'t [u8],
    reader: csv::Reader<&'t [u8]>,
    record: csv::ByteRecord,
    lines: LineCounter,
    header_done: bool,
}

impl<'t> Rows<'t> {
    /// The next non-blank data row, or `None` at the end of the file. A row with more cells than the header, or
    /// fewer, is an error naming its line.
    pub fn next_row(&mut self) -> Result<Option<Row<'_>>> {
        let table = self.table;
        loop {
            if !read_record(&mut self.reader, &mut self.record, &table.path)? {
                return Ok(None);
            }
            if is_blank(&self.record) {
                // Keep the line count exact across skipped blank rows.
                continue;
            }
            let line = self.lines.start_line(self.body, &self.record) + table.line_offset;
            if self.reader.position().byte() as usize >= self.body.len() {
                check_closed_quotes(self.body.get(self.lines.last_start..).unwrap_or_default(), table, line)?;
            }
            if !self.header_done {
                self.header_done = true;
                continue;
            }
            let bytes_in_record = self.record.as_slice().len();
            if bytes_in_record > MAX_RECORD_BYTES {
                return Err(table.error_at(
                    line,
                    format!(
                        "this row is {} MB long; a quote (\") that opens a cell is probably never closed, which \
                         makes the rest of the file one cell. Fix the quotes on this line",
                        bytes_in_record >> 20
                    ),
                ));
            }
            let width = table.headers.len();
            let found = self.record.len();
            if found != width {
                let hint = if found > width {
                    "a value probably contains the delimiter without quotes around it, or the header lost a column"
                } else {
                    "a value probably contains a line break or a stray quote (\"), or the row was cut short"
                };
                return Err(table.error_at(
                    line,
                    format!(
                        "this row has {found} cells but the header (line {}) has {width}: {hint}",
                        table.header_line
                    ),
                ));
            }
            return Ok(Some(Row { table, record: &self.record, line }));
        }
    }
}

/// One data row of a [`Table`].
pub struct Row<'r> {
    table: &'r Table,
    record: &'r csv::ByteRecord,
    line: u64,
}

impl<'r> Row<'r> {
    /// The line this row starts on (the header is line 1).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The cell in column `index`, exactly as written (quotes removed). Empty when the column does not exist.
    pub fn raw(&self, index: usize) -> Result<&'r str> {
        match self.record.get(index) {
            None => Ok(""),
            Some(cell) => std::str::from_utf8(cell)
                .map_err(|e| self.table.cell_error(self.line, index, format!("not valid UTF-8: {e}"))),
        }
    }

    /// The cell in column `index`, trimmed; `None` when it is empty or only spaces.
    pub fn text(&self, index: usize) -> Result<Option<&'r str>> {
        let cell = self.raw(index)?.trim();
        Ok((!cell.is_empty()).then_some(cell))
    }

    /// Like [`Row::text`] for an optional column.
    pub fn text_opt(&self, index: Option<usize>) -> Result<Option<&'r str>> {
        match index {
            Some(i) => self.text(i),
            None => Ok(None),
        }
    }

    /// An input error about column `index` of this row.
    pub fn error(&self, index: usize, message: impl Into<String>) -> Error {
        self.table.cell_error(self.line, index, message)
    }
}

/// The comparison key of a header: lowercase letters and digits only, so `E-mail`, `e_mail` and `EMail` match.
pub fn header_key(raw: &str) -> String {
    raw.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

fn quoted_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
}

fn reader_for(body: &[u8], delimiter: u8) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .buffer_capacity(64 * 1024)
        .from_reader(body)
}

fn read_record(reader: &mut csv::Reader<&[u8]>, record: &mut csv::ByteRecord, path: &Path) -> Result<bool> {
    // Reading from memory with `flexible` on, the csv crate has no error to give; map one anyway.
    reader.read_byte_record(record).map_err(|e| Error::input(path, format!("cannot read as CSV: {e}")))
}

fn is_blank(record: &csv::ByteRecord) -> bool {
    record.iter().all(|cell| cell.iter().all(u8::is_ascii_whitespace))
}

/// Counts newlines incrementally, to give each record the line it starts on.
#[derive(Default)]
struct LineCounter {
    /// Bytes of the body already counted.
    counted: usize,
    /// Newlines seen in them.
    newlines: u64,
    /// Where the last record asked about starts.
    last_start: usize,
}

impl LineCounter {
    /// The 1-based line where `record` starts. The csv crate gives the byte offset just after the previous
    /// record's terminator; skip any line-break bytes from there to find the record's first byte.
    fn start_line(&mut self, body: &[u8], record: &csv::ByteRecord) -> u64 {
        let mut start = record.position().map_or(0, |p| p.byte()) as usize;
        while body.get(start).is_some_and(|b| *b == b'\n' || *b == b'\r') {
            start += 1;
        }
        let start = start.min(body.len());
        self.last_start = start;
        if start > self.counted {
            self.newlines += count_newlines(body.get(self.counted..start).unwrap_or_default());
            self.counted = start;
        }
        self.newlines + 1
    }
}

fn count_newlines(bytes: &[u8]) -> u64 {
    // Chunked so the compiler vectorizes it; this runs over every byte of every file.
    bytes.chunks(4096).map(|c| c.iter().filter(|&&b| b == b'\n').count() as u64).sum()
}

/// The last record of a file reaches its end: if its quotes do not pair up, a quote was opened and never
/// closed, and everything after it became one cell.
fn check_closed_quotes(last_record: &[u8], table: &Table, line: u64) -> Result<()> {
    if last_record.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
        return Err(table.error_at(
            line,
            "a quote (\") opens a cell on this line and is never closed, so the rest of the file became one cell; \
             fix the quotes on this line",
        ));
    }
    Ok(())
}

fn first_line(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => &bytes[..i],
        None => bytes,
    }
}

/// Picks the delimiter from the header line: the most frequent of `,`, `;` and tab outside quotes; `,` when the
/// header has a single column.
fn sniff_delimiter(body: &[u8]) -> u8 {
    let (mut commas, mut semicolons, mut tabs) = (0usize, 0usize, 0usize);
    let mut in_quotes = false;
    let mut started = false;
    for &b in body {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\n' | b'\r' if !in_quotes && started => break,
            b',' if !in_quotes => commas += 1,
            b';' if !in_quotes => semicolons += 1,
            b'\t' if !in_quotes => tabs += 1,
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            started = true;
        }
    }
    if semicolons > commas && semicolons >= tabs {
        b';'
    } else if tabs > commas && tabs > semicolons {
        b'\t'
    } else {
        b','
    }
}

fn check_utf8(bytes: &[u8], path: &Path) -> Result<()> {
    if let Err(e) = std::str::from_utf8(bytes) {
        let offset = e.valid_up_to();
        let before = bytes.get(..offset).unwrap_or_default();
        let line = count_newlines(before) + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        return Err(Error::input_at(
            path,
            line,
            format!(
                "not UTF-8 text (byte {} of the file, byte {} of the line). Save it as \"CSV UTF-8 (Comma \
                 delimited)\" in Excel, or convert it (iconv -f WINDOWS-1252 -t UTF-8), and try again",
                offset + 1,
                offset - line_start + 1
            ),
        ));
    }
    Ok(())
}

fn check_line_lengths(bytes: &[u8], path: &Path) -> Result<()> {
    if bytes.len() <= MAX_LINE_BYTES {
        return Ok(());
    }
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.len() > MAX_LINE_BYTES {
            return Err(Error::input_at(
                path,
                i as u64 + 1,
                format!(
                    "this line is {} MB long, more than the {} MB writeback reads; this is not a CSV export \
                     (or its line breaks were lost)",
                    line.len() >> 20,
                    MAX_LINE_BYTES >> 20
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<Table> {
        Table::from_bytes(text.as_bytes(), Path::new("t.csv"))
    }

    fn all_rows(t: &Table, col: usize) -> Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        let mut rows = t.rows();
        while let Some(row) = rows.next_row()? {
            out.push((row.line(), row.raw(col)?.to_string()));
        }
        Ok(out)
    }

    #[test]
    fn comma_lf() {
        let t = table("Email,Name\na@x.com,A\nb@x.com,B\n").unwrap();
        assert_eq!(t.delimiter(), b',');
        assert_eq!(t.headers(), ["Email", "Name"]);
        assert_eq!(all_rows(&t, 0).unwrap(), [(2, "a@x.com".into()), (3, "b@x.com".into())]);
    }

    #[test]
    fn semicolon_crlf_bom_and_quotes() {
        let text = "\u{feff}\"E-mail\";\"Last Name\"\r\na@x.com;\"Smith; Jr\"\r\n\r\n\"b@x.com\";\"two\r\nlines\"\r\nc@x.com;C\r\n";
        let t = table(text).unwrap();
        assert_eq!(t.delimiter(), b';');
        assert_eq!(t.headers(), ["E-mail", "Last Name"]);
        assert_eq!(all_rows(&t, 1).unwrap(), [(2, "Smith; Jr".into()), (4, "two\r\nlines".into()), (6, "C".into())]);
        assert_eq!(t.sha256(), crate::plan::precondition::sha256_hex(text.as_bytes()));
    }

    #[test]
    fn no_trailing_newline_and_cr_only() {
        let t = table("Email\ra@x.com\rb@x.com").unwrap();
        assert_eq!(t.count_rows().unwrap(), 2);
        let t = table("Email,Name\na@x.com,A").unwrap();
        assert_eq!(all_rows(&t, 1).unwrap(), [(2, "A".into())]);
    }

    #[test]
    fn delimiter_inside_quotes_in_header_is_ignored() {
        let t = table("\"a,b\";c;d\n1;2;3\n").unwrap();
        assert_eq!(t.delimiter(), b';');
        let t = table("Email\n\"x;y\"\n").unwrap();
        assert_eq!(t.delimiter(), b',');
        let t = table("a\tb\tc\n1\t2\t3\n").unwrap();
        assert_eq!(t.delimiter(), b'\t');
    }

    #[test]
    fn excel_sep_line() {
        let t = table("sep=;\r\nEmail;Name\r\na@x.com;A, B\r\n").unwrap();
        assert_eq!(t.delimiter(), b';');
        assert_eq!(t.header_line(), 2);
        assert_eq!(all_rows(&t, 1).unwrap(), [(3, "A, B".into())]);
    }

    #[test]
    fn header_matching() {
        let t = table("First_Name, e-mail ,EMAIL ADDRESS,@odata.type\n").unwrap();
        assert_eq!(t.column(&["FirstName"]), Some(0));
        assert_eq!(t.column(&["Email"]), Some(1));
        assert_eq!(t.column(&["EmailAddress", "Email"]), Some(2));
        assert_eq!(t.column(&["odata.type"]), Some(3));
        assert_eq!(t.column(&["UPN"]), None);
        assert_eq!(t.exact_column("e-mail"), Some(1));
        assert_eq!(t.exact_column("email"), None);
        let err = t.require_column(&["Email", "E-mail", "Email Address"], "e-mail").unwrap_err().to_string();
        assert!(err.starts_with("t.csv:1: two columns could be the e-mail"), "{err}");
        let err = t.require_column(&["UPN"], "user principal name").unwrap_err().to_string();
        assert!(err.contains("no user principal name column: expected one of 'UPN'; the header has"), "{err}");
    }

    #[test]
    fn header_only_is_zero_rows() {
        assert_eq!(table("Email,Name\r\n").unwrap().count_rows().unwrap(), 0);
        assert_eq!(table("Email").unwrap().count_rows().unwrap(), 0);
    }

    #[test]
    fn blank_rows_are_skipped_and_lines_stay_right() {
        let t = table("\n\nEmail,Name\n,\n\na@x.com,A\n ,  \n").unwrap();
        assert_eq!(t.header_line(), 3);
        assert_eq!(all_rows(&t, 0).unwrap(), [(6, "a@x.com".into())]);
    }

    #[test]
    fn empty_files_are_refused() {
        for text in ["", "\u{feff}", "  \r\n\n"] {
            let err = table(text).unwrap_err().to_string();
            assert!(err.starts_with("t.csv: the file is empty"), "{err}");
        }
    }

    #[test]
    fn bad_utf8_names_line_and_byte() {
        let err = Table::from_bytes(b"Email,Name\na@x.com,Ren\xe9\n".to_vec(), Path::new("t.csv")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.csv:2: not UTF-8 text (byte 23 of the file, byte 12 of the line)"), "{msg}");
        assert_eq!(err.exit_code(), crate::error::exit::INPUT);
    }

    #[test]
    fn utf16_is_refused() {
        let err = Table::from_bytes(b"\xff\xfeE\0m\0".to_vec(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.contains("UTF-16"), "{err}");
    }

    #[test]
    fn ragged_rows_are_errors() {
        let t = table("Email,Name\na@x.com,A\nb@x.com,B,extra\n").unwrap();
        let err = all_rows(&t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:3: this row has 3 cells but the header (line 1) has 2"), "{err}");
        let t = table("Email,Name\na@x.com\n").unwrap();
        let err = all_rows(&t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:2: this row has 1 cells but the header (line 1) has 2"), "{err}");
    }

    #[test]
    fn unclosed_quote_is_reported() {
        let t = table("Email,Name\na@x.com,\"Smith\nb@x.com,B\n").unwrap();
        let err = all_rows(&t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:2: a quote (\") opens a cell on this line and is never closed"), "{err}");
    }

    #[test]
    fn huge_lines_are_refused() {
        let mut text = b"Email\n".to_vec();
        text.extend(std::iter::repeat_n(b'a', MAX_LINE_BYTES + 1));
        let err = Table::from_bytes(text, Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:2: this line is 10 MB long"), "{err}");
    }

    #[test]
    fn huge_records_are_refused() {
        // Many short lines inside one unclosed quote.
        let mut text = b"Email,Name\na@x.com,\"".to_vec();
        for _ in 0..(MAX_RECORD_BYTES / 100 + 10) {
            text.extend(std::iter::repeat_n(b'x', 99));
            text.push(b'\n');
        }
        text.extend(b"\"\nb@x.com,B\n");
        let t = Table::from_bytes(text, Path::new("t.csv")).unwrap();
        let err = all_rows(&t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:2: this row is 10 MB long"), "{err}");
    }

    #[test]
    fn cell_errors_name_the_column() {
        let t = table("Email,Object ID\na@x.com,nope\n").unwrap();
        let mut rows = t.rows();
        let row = rows.next_row().unwrap().unwrap();
        assert_eq!(row.text(1).unwrap(), Some("nope"));
        assert_eq!(row.error(1, "bad").to_string(), "t.csv:2: column 'Object ID': bad");
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = Table::open(Path::new("/nonexistent/x.csv")).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::INPUT);
        assert!(err.to_string().starts_with("/nonexistent/x.csv: cannot read"));
    }
}
