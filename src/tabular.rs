//! Reading the CSV files people export from PoliteMail and the Entra admin center.
//!
//! One reader for all of them, because they share the same troubles: Excel adds a byte-order mark or saves with
//! `;` in some locales, headers change spelling between portal versions, and a stray quote can swallow half a file.
//!
//! - The file is streamed, not loaded: memory stays flat however large the export, and its SHA-256 (which the
//!   plan records) is computed on the way through.
//! - It must be UTF-8, with or without a BOM (checked for the header and every cell a reader uses). Absurd input is refused early with a clear message: an empty file,
//!   UTF-16, a line longer than [`MAX_LINE_BYTES`], a file larger than [`MAX_FILE_BYTES`].
//! - The delimiter (`,`, `;` or tab) is sniffed from the header line, outside quotes. An Excel `sep=;` first line
//!   is honoured.
//! - Headers are matched ignoring case, spaces and punctuation (`First Name` = `first_name` = `FirstName`).
//! - Rows are read into one reused [`csv::ByteRecord`]; cells are borrowed `&str`, so a reader allocates only what
//!   it keeps. Each row knows the line it starts on (the header is line 1), and errors name file, line and column.
//!
//! ```no_run
//! # fn main() -> writeback::Result<()> {
//! use writeback::tabular::Table;
//! let mut table = Table::open(std::path::Path::new("list.csv"))?;
//! let email = table.require_column(&["Email", "E-mail"], "e-mail")?;
//! while let Some(row) = table.next_row()? {
//!     println!("line {}: {:?}", row.line(), row.text(email)?);
//! }
//! let sha256 = table.finish()?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The largest file accepted (2 GiB). The biggest real exports (1 million rows) are around 250 MB.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// The longest physical line accepted (10 MiB). Real rows are a few hundred bytes.
pub const MAX_LINE_BYTES: u64 = 10 << 20;

/// The longest record accepted (10 MiB without quotes and delimiters): a longer one is almost always an opening
/// quote that was never closed, which makes the rest of the file one cell.
pub const MAX_RECORD_BYTES: usize = 10 << 20;

/// The most columns accepted in a header.
pub const MAX_COLUMNS: usize = 4096;

/// How much of the file is read ahead to sniff the BOM, the `sep=` line and the delimiter.
const PREFIX_BYTES: usize = 64 * 1024;

/// Line breaks and quotes waiting to be matched to a record; more means the file is not a CSV export.
const MAX_PENDING_MARKS: usize = 8 << 20;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A CSV file being read: its header is parsed and its delimiter known; rows are read once, in order, with
/// [`Table::next_row`]. [`Table::finish`] gives the SHA-256 of the file's bytes.
pub struct Table {
    path: PathBuf,
    reader: csv::Reader<Tracker>,
    record: csv::ByteRecord,
    /// 1 when an Excel `sep=` line was skipped (csv line numbers start after it), else 0.
    line_offset: u64,
    delimiter: u8,
    headers: Vec<String>,
    keys: Vec<String>,
    header_line: u64,
    /// Where the last record returned starts, and the number of quotes before it (to spot an unclosed quote).
    last_line: u64,
    last_quotes_before: u64,
    done: bool,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("path", &self.path).field("headers", &self.headers).finish_non_exhaustive()
    }
}

impl Table {
    /// Opens the file at `path` and reads its header.
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
        let file = File::open(path).map_err(|e| Error::read(path, e))?;
        Table::start(Source::file(file), path)
    }

    /// Reads the header of CSV text held in memory; `name` is used in messages (usually the path it came from).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>, name: &Path) -> Result<Table> {
        let bytes = bytes.into();
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(Error::input(name, format!("the data is larger than {} MB", MAX_FILE_BYTES >> 20)));
        }
        Table::start(Source::bytes(bytes), name)
    }

    fn start(mut source: Source, name: &Path) -> Result<Table> {
        let path = name.to_path_buf();
        source.fill_prefix().map_err(|e| Error::read(&path, e))?;
        let prefix = source.prefix.as_slice();
        if prefix.starts_with(b"\xFF\xFE") || prefix.starts_with(b"\xFE\xFF") {
            return Err(Error::input(
                &path,
                "the file is UTF-16 text (Excel's \"Unicode Text\"); save it as \"CSV UTF-8 (Comma delimited)\" \
                 and try again",
            ));
        }
        let mut body_start = if prefix.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { 0 };
        let rest = prefix.get(body_start..).unwrap_or_default();
        if source.prefix_is_whole_file && rest.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::input(
                &path,
                "the file is empty; expected a header line (such as 'Email,First Name,Last Name') and one row per \
                 entry",
            ));
        }

        // Excel's "sep=;" hint line names the delimiter and is not part of the data.
        let mut line_offset = 0;
        let mut delimiter = None;
        let first = first_line(rest);
        let trimmed = first.trim_ascii();
        if trimmed.len() == 5 && trimmed[..4].eq_ignore_ascii_case(b"sep=") {
            delimiter = Some(trimmed[4]);
            body_start += first.len();
            line_offset = 1;
            if prefix.get(body_start) == Some(&b'\n') {
                body_start += 1;
            }
        }
        let delimiter = match delimiter {
            Some(d) => d,
            None => sniff_delimiter(prefix.get(body_start..).unwrap_or_default()),
        };
        source.pos = body_start;

        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .buffer_capacity(64 * 1024)
            .from_reader(Tracker::new(source));
        let mut table = Table {
            path,
            reader,
            record: csv::ByteRecord::new(),
            line_offset,
            delimiter,
            headers: Vec::new(),
            keys: Vec::new(),
            header_line: 1,
            last_line: 1,
            last_quotes_before: 0,
            done: false,
        };

        // The header: the first record that is not blank.
        if !table.read_record()? {
            return Err(table.error_at(table.last_line, "the file has no header line"));
        }
        if std::str::from_utf8(table.record.as_slice()).is_err() {
            return Err(table.utf8_error());
        }
        table.header_line = table.last_line;
        if table.record.len() > MAX_COLUMNS {
            return Err(table.error_at(
                table.header_line,
                format!("the header has {} columns, more than the {MAX_COLUMNS} writeback reads", table.record.len()),
            ));
        }
        let (mut headers, mut keys) = (Vec::new(), Vec::new());
        for cell in table.record.iter() {
            // UTF-8 was checked just above, so this cannot fail; the fallback keeps it panic-free.
            let text = std::str::from_utf8(cell).unwrap_or_default().trim().trim_start_matches('\u{feff}');
            headers.push(text.to_string());
            keys.push(header_key(text));
        }
        table.headers = headers;
        table.keys = keys;
        table.record = csv::ByteRecord::with_capacity(256, table.headers.len());
        Ok(table)
    }

    /// The file name used in messages.
    pub fn path(&self) -> &Path {
        &self.path
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
        cell_error(&self.path, self.header_name(index), line, message)
    }

    /// The next data row, or `None` at the end of the file. Entirely blank rows (`,,,` or empty lines) are
    /// skipped. A row with more or fewer cells than the header is an error naming its line.
    pub fn next_row(&mut self) -> Result<Option<Row<'_>>> {
        if !self.read_record()? {
            return Ok(None);
        }
        let line = self.last_line;
        let found = self.record.len();
        let width = self.headers.len();
        if found != width {
            let hint = if found > width {
                "a value probably contains the delimiter without quotes around it, or the header lost a column"
            } else {
                "a value probably contains a line break or a stray quote (\"), or the row was cut short"
            };
            return Err(self.error_at(
                line,
                format!("this row has {found} cells but the header (line {}) has {width}: {hint}", self.header_line),
            ));
        }
        // One UTF-8 check for the whole row is much cheaper than one per cell; cells are then cut out of it.
        let text = std::str::from_utf8(self.record.as_slice()).ok();
        Ok(Some(Row { path: &self.path, headers: &self.headers, record: &self.record, text, line }))
    }

    /// Reads the rest of the file (if the rows were not all read) and returns the SHA-256 (hex) of its raw bytes,
    /// BOM included: what the plan records as this input.
    pub fn finish(self) -> Result<String> {
        let path = self.path;
        let mut source = self.reader.into_inner().source;
        std::io::copy(&mut source, &mut std::io::sink()).map_err(|e| Error::read(&path, e))?;
        Ok(source.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Reads every remaining row and returns how many there were (for tests and estimates).
    pub fn count_rows(&mut self) -> Result<u64> {
        let mut n = 0;
        while self.next_row()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Reads the next non-blank record into `self.record`, setting `last_line`; false at the end of the file.
    fn read_record(&mut self) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        loop {
            let more = match self.reader.read_byte_record(&mut self.record) {
                Ok(more) => more,
                Err(e) => return Err(self.stream_error(e)),
            };
            if !more {
                self.done = true;
                // A record that reaches the end of the file with an odd number of quotes opened one and never
                // closed it: everything after it became one cell.
                let tracker = self.reader.get_ref();
                if (tracker.quotes_total - self.last_quotes_before) % 2 == 1 {
                    return Err(self.error_at(
                        self.last_line,
                        "a quote (\") opens a cell on this line and is never closed, so the rest of the file became \
                         one cell; fix the quotes on this line",
                    ));
                }
                return Ok(false);
            }
            if is_blank(&self.record) {
                continue;
            }
            let start = self.record.position().map_or(0, |p| p.byte());
            let (line, quotes_before) = self.reader.get_mut().record_start(start);
            self.last_line = line + self.line_offset;
            self.last_quotes_before = quotes_before;
            if self.reader.get_ref().too_many_marks {
                return Err(self.error_at(
                    self.last_line,
                    "millions of line breaks or quotes without a row between them: this is not a CSV export",
                ));
            }
            let size = self.record.as_slice().len();
            if size > MAX_RECORD_BYTES {
                return Err(self.error_at(
                    self.last_line,
                    format!(
                        "this row is {} MB long; a quote (\") that opens a cell is probably never closed, which \
                         makes the rest of the file one cell. Fix the quotes on this line",
                        size >> 20
                    ),
                ));
            }
            return Ok(true);
        }
    }

    fn utf8_error(&self) -> Error {
        for (index, cell) in self.record.iter().enumerate() {
            if let Err(e) = std::str::from_utf8(cell) {
                if self.headers.is_empty() {
                    return self.error_at(self.last_line, format!("header cell {}: {}", index + 1, not_utf8(&e)));
                }
                return self.cell_error(self.last_line, index, not_utf8(&e));
            }
        }
        self.error_at(self.last_line, "not UTF-8 text; save the file as \"CSV UTF-8 (Comma delimited)\"")
    }

    fn stream_error(&self, err: csv::Error) -> Error {
        let tracker = self.reader.get_ref();
        match err.into_kind() {
            csv::ErrorKind::Io(_) if tracker.line_too_long => self.error_at(
                tracker.newlines_total + 1 + self.line_offset,
                format!(
                    "this line is longer than {} MB: this is not a CSV export (or its line breaks were lost)",
                    MAX_LINE_BYTES >> 20
                ),
            ),
            csv::ErrorKind::Io(e) => Error::read(&self.path, e),
            other => Error::input(&self.path, format!("cannot read as CSV: {other:?}")),
        }
    }
}

fn not_utf8(e: &std::str::Utf8Error) -> String {
    format!(
        "not UTF-8 text (byte {} of the cell). Save the file as \"CSV UTF-8 (Comma delimited)\" in Excel, or convert \
         it (iconv -f WINDOWS-1252 -t UTF-8), and try again",
        e.valid_up_to() + 1
    )
}

fn cell_error(path: &Path, header: &str, line: u64, message: impl Into<String>) -> Error {
    Error::Input { location: format!("{}:{line}: column '{header}'", path.display()), message: message.into() }
}

/// One data row of a [`Table`].
pub struct Row<'r> {
    path: &'r Path,
    headers: &'r [String],
    record: &'r csv::ByteRecord,
    /// The cells end to end, when they are UTF-8 as a whole.
    text: Option<&'r str>,
    line: u64,
}

impl<'r> Row<'r> {
    /// The line this row starts on (the header is line 1).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The cell in column `index`, exactly as written (quotes removed). Empty when the column does not exist; an
    /// error naming line, column and byte when it is not UTF-8.
    pub fn raw(&self, index: usize) -> Result<&'r str> {
        // A cell cut from the row's text on character boundaries is UTF-8. (The row can be UTF-8 as a whole while
        // a cell is not, when a character is split between two cells: then the cut fails and the cell is checked.)
        if let Some(cell) = self.text.zip(self.record.range(index)).and_then(|(text, range)| text.get(range)) {
            return Ok(cell);
        }
        match self.record.get(index) {
            None => Ok(""),
            Some(cell) => std::str::from_utf8(cell).map_err(|e| self.error(index, not_utf8(&e))),
        }
    }

    /// The cell in column `index`, trimmed; `None` when it is empty or only spaces.
    pub fn text(&self, index: usize) -> Result<Option<&'r str>> {
        let cell = crate::identity::trim(self.raw(index)?);
        Ok((!cell.is_empty()).then_some(cell))
    }

    /// Like [`Row::text`] for an optional column.
    pub fn text_opt(&self, index: Option<usize>) -> Result<Option<&'r str>> {
        match index {
            Some(i) => self.text(i),
            None => Ok(None),
        }
    }

    /// An input error about column `index` of this row: `file:line: column 'Email': message`.
    pub fn error(&self, index: usize, message: impl Into<String>) -> Error {
        let header = self.headers.get(index).map(String::as_str).unwrap_or_default();
        cell_error(self.path, header, self.line, message)
    }
}

/// The comparison key of a header: lowercase letters and digits only, so `E-mail`, `e_mail` and `EMail` match.
pub fn header_key(raw: &str) -> String {
    raw.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

fn quoted_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
}

fn is_blank(record: &csv::ByteRecord) -> bool {
    record.iter().all(|cell| cell.iter().all(u8::is_ascii_whitespace))
}

/// The raw bytes: a prefix read ahead for sniffing, then the rest of the file; everything read is hashed.
struct Source {
    prefix: Vec<u8>,
    /// Next byte of `prefix` to hand out.
    pos: usize,
    /// True when `prefix` holds the whole file.
    prefix_is_whole_file: bool,
    file: Option<File>,
    hasher: Sha256,
}

impl Source {
    fn file(file: File) -> Source {
        Source { prefix: Vec::new(), pos: 0, prefix_is_whole_file: false, file: Some(file), hasher: Sha256::new() }
    }

    fn bytes(bytes: Vec<u8>) -> Source {
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        Source { prefix: bytes, pos: 0, prefix_is_whole_file: true, file: None, hasher }
    }

    /// Reads up to [`PREFIX_BYTES`] from the file into the prefix.
    fn fill_prefix(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let mut chunk = vec![0; PREFIX_BYTES];
        let mut filled = 0;
        while filled < PREFIX_BYTES {
            let n = file.read(chunk.get_mut(filled..).unwrap_or_default())?;
            if n == 0 {
                self.prefix_is_whole_file = true;
                self.file = None;
                break;
            }
            filled += n;
        }
        chunk.truncate(filled);
        self.hasher.update(&chunk);
        self.prefix = chunk;
        Ok(())
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(rest) = self.prefix.get(self.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.len());
            buf.get_mut(..n).unwrap_or_default().copy_from_slice(rest.get(..n).unwrap_or_default());
            self.pos += n;
            return Ok(n);
        }
        let Some(file) = self.file.as_mut() else { return Ok(0) };
        let n = file.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Watches the bytes the csv reader consumes, to give each record the line it starts on, to count quotes, and to
/// stop at an absurdly long line before it is buffered.
struct Tracker {
    source: Source,
    /// Bytes handed to the csv reader so far (the csv reader's byte offsets count from the same place).
    offset: u64,
    /// Offsets of `\r`, `\n` and `"` handed out but not yet placed before or after a record start.
    marks: VecDeque<(u64, u8)>,
    /// Newlines and quotes already placed before the last record start.
    newlines_before: u64,
    quotes_before: u64,
    newlines_total: u64,
    quotes_total: u64,
    /// Offset just after the last newline.
    line_start: u64,
    line_too_long: bool,
    too_many_marks: bool,
}

impl Tracker {
    fn new(source: Source) -> Tracker {
        Tracker {
            source,
            offset: 0,
            marks: VecDeque::new(),
            newlines_before: 0,
            quotes_before: 0,
            newlines_total: 0,
            quotes_total: 0,
            line_start: 0,
            line_too_long: false,
            too_many_marks: false,
        }
    }

    /// For a record the csv reader says starts at byte `start` (just after the previous record's terminator),
    /// skips the line breaks before its first byte and returns its 1-based line and the number of quotes before it.
    fn record_start(&mut self, start: u64) -> (u64, u64) {
        let mut first_byte = start;
        while let Some(&(offset, byte)) = self.marks.front() {
            let before = offset < first_byte;
            let leading_break = offset == first_byte && (byte == b'\n' || byte == b'\r');
            if !before && !leading_break {
                break;
            }
            if leading_break {
                first_byte += 1;
            }
            match byte {
                b'\n' => self.newlines_before += 1,
                b'"' => self.quotes_before += 1,
                _ => {}
            }
            self.marks.pop_front();
        }
        (self.newlines_before + 1, self.quotes_before)
    }
}

impl Read for Tracker {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.line_too_long {
            return Err(std::io::Error::other("line too long"));
        }
        let n = self.source.read(buf)?;
        let chunk = buf.get(..n).unwrap_or_default();
        // Most bytes are none of the three marks: test eight at a time and look closer only when one is there.
        let mut words = chunk.chunks_exact(8);
        let mut base = 0;
        for word in words.by_ref() {
            let value = u64::from_le_bytes(word.try_into().unwrap_or_default());
            if has_byte(value, b'\n') | has_byte(value, b'\r') | has_byte(value, b'"') != 0 {
                self.mark_bytes(word, base);
            }
            base += 8;
        }
        self.mark_bytes(words.remainder(), base);
        self.offset += n as u64;
        if self.offset - self.line_start > MAX_LINE_BYTES {
            self.line_too_long = true;
            return Err(std::io::Error::other("line too long"));
        }
        if self.marks.len() > MAX_PENDING_MARKS {
            self.too_many_marks = true;
        }
        Ok(n)
    }
}

impl Tracker {
    /// Records the marks in `bytes`, which start `base` bytes into the chunk being read.
    fn mark_bytes(&mut self, bytes: &[u8], base: usize) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = self.offset + (base + i) as u64;
            match b {
                b'\n' => {
                    self.newlines_total += 1;
                    self.line_start = at + 1;
                }
                b'"' => self.quotes_total += 1,
                b'\r' => {}
                _ => continue,
            }
            self.marks.push_back((at, b));
        }
    }
}

/// Non-zero when one of the eight bytes of `word` is `byte` (the classic "has zero byte" test on `word ^ byte`).
fn has_byte(word: u64, byte: u8) -> u64 {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (LOW * u64::from(byte));
    x.wrapping_sub(LOW) & !x & HIGH
}

fn first_line(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => bytes.get(..i).unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<Table> {
        Table::from_bytes(text.as_bytes(), Path::new("t.csv"))
    }

    fn all_rows(t: &mut Table, col: usize) -> Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        while let Some(row) = t.next_row()? {
            out.push((row.line(), row.raw(col)?.to_string()));
        }
        Ok(out)
    }

    #[test]
    fn comma_lf() {
        let mut t = table("Email,Name\na@x.com,A\nb@x.com,B\n").unwrap();
        assert_eq!(t.delimiter(), b',');
        assert_eq!(t.headers(), ["Email", "Name"]);
        assert_eq!(all_rows(&mut t, 0).unwrap(), [(2, "a@x.com".into()), (3, "b@x.com".into())]);
    }

    #[test]
    fn semicolon_crlf_bom_and_quotes() {
        let text = "\u{feff}\"E-mail\";\"Last Name\"\r\na@x.com;\"Smith; Jr\"\r\n\r\n\"b@x.com\";\"two\r\nlines\"\r\nc@x.com;C\r\n";
        let mut t = table(text).unwrap();
        assert_eq!(t.delimiter(), b';');
        assert_eq!(t.headers(), ["E-mail", "Last Name"]);
        assert_eq!(
            all_rows(&mut t, 1).unwrap(),
            [(2, "Smith; Jr".into()), (4, "two\r\nlines".into()), (6, "C".into())]
        );
        assert_eq!(t.finish().unwrap(), crate::plan::precondition::sha256_hex(text.as_bytes()));
    }

    #[test]
    fn no_trailing_newline_and_cr_only() {
        let mut t = table("Email\ra@x.com\rb@x.com").unwrap();
        assert_eq!(t.count_rows().unwrap(), 2);
        let mut t = table("Email,Name\na@x.com,A").unwrap();
        assert_eq!(all_rows(&mut t, 1).unwrap(), [(2, "A".into())]);
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
        let mut t = table("sep=;\r\nEmail;Name\r\na@x.com;A, B\r\n").unwrap();
        assert_eq!(t.delimiter(), b';');
        assert_eq!(t.header_line(), 2);
        assert_eq!(all_rows(&mut t, 1).unwrap(), [(3, "A, B".into())]);
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
        let mut t = table("\n\nEmail,Name\n,\n\na@x.com,A\n ,  \n").unwrap();
        assert_eq!(t.header_line(), 3);
        assert_eq!(all_rows(&mut t, 0).unwrap(), [(6, "a@x.com".into())]);
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
        let mut t = Table::from_bytes(b"Email,Name\na@x.com,Ren\xe9\n".to_vec(), Path::new("t.csv")).unwrap();
        let err = all_rows(&mut t, 1).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.csv:2: column 'Name': not UTF-8 text (byte 4 of the cell)"), "{msg}");
        assert_eq!(err.exit_code(), crate::error::exit::INPUT);
        // A header that is not UTF-8 stops the read at once.
        let err = Table::from_bytes(b"Email,Pr\xe9nom\n".to_vec(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:1: header cell 2: not UTF-8 text (byte 3 of the cell)"), "{err}");
    }

    #[test]
    fn a_character_split_between_cells_is_not_utf8() {
        // "Ren\xc3" and "\xa9" are each invalid, though the row's bytes end to end are valid UTF-8 ("René").
        let mut t = Table::from_bytes(b"Email,Name,Note\na@x.com,Ren\xc3,\xa9\n".to_vec(), Path::new("t.csv")).unwrap();
        let row = t.next_row().unwrap().unwrap();
        assert_eq!(row.raw(0).unwrap(), "a@x.com");
        let msg = row.raw(1).unwrap_err().to_string();
        assert!(msg.starts_with("t.csv:2: column 'Name': not UTF-8 text (byte 4 of the cell)"), "{msg}");
        assert!(row.raw(2).is_err());
        assert_eq!(row.raw(7).unwrap(), "");
    }

    #[test]
    fn utf16_is_refused() {
        let err = Table::from_bytes(b"\xff\xfeE\0m\0".to_vec(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.contains("UTF-16"), "{err}");
    }

    #[test]
    fn ragged_rows_are_errors() {
        let mut t = table("Email,Name\na@x.com,A\nb@x.com,B,extra\n").unwrap();
        let err = all_rows(&mut t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:3: this row has 3 cells but the header (line 1) has 2"), "{err}");
        let mut t = table("Email,Name\na@x.com\n").unwrap();
        let err = all_rows(&mut t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:2: this row has 1 cells but the header (line 1) has 2"), "{err}");
    }

    #[test]
    fn unclosed_quote_is_reported() {
        let mut t = table("Email,Name\na@x.com,\"Smith\nb@x.com,B\n").unwrap();
        let err = all_rows(&mut t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:2: a quote (\") opens a cell on this line and is never closed"), "{err}");
    }

    #[test]
    fn huge_lines_are_refused() {
        let mut text = b"Email\n".to_vec();
        text.extend(std::iter::repeat_n(b'a', MAX_LINE_BYTES as usize + 1));
        let mut t = Table::from_bytes(text, Path::new("t.csv")).unwrap();
        let err = all_rows(&mut t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:2: this line is longer than 10 MB"), "{err}");
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
        let mut t = Table::from_bytes(text, Path::new("t.csv")).unwrap();
        let err = all_rows(&mut t, 0).unwrap_err().to_string();
        assert!(err.starts_with("t.csv:2: this row is 10 MB long"), "{err}");
    }

    #[test]
    fn cell_errors_name_the_column() {
        let mut t = table("Email,Object ID\na@x.com,nope\n").unwrap();
        let row = t.next_row().unwrap().unwrap();
        assert_eq!(row.text(1).unwrap(), Some("nope"));
        assert_eq!(row.error(1, "bad").to_string(), "t.csv:2: column 'Object ID': bad");
    }

    #[test]
    fn large_files_stream_with_exact_lines_and_hash() {
        // Bigger than the read-ahead prefix and the csv buffer, with CRLF, blank lines and multi-line cells, so
        // record starts fall across chunk boundaries.
        let mut text = "\u{feff}Email;Note\r\n".to_string();
        let mut expected = Vec::new();
        let mut line = 2;
        for i in 0..20_000 {
            if i % 7 == 0 {
                text.push_str("\r\n");
                line += 1;
            }
            if i % 5 == 0 {
                text.push_str(&format!("u{i}@x.example;\"two\r\nlines; \"\"quoted\"\"\"\r\n"));
                expected.push((line, format!("u{i}@x.example")));
                line += 2;
            } else {
                text.push_str(&format!("u{i}@x.example;plain\r\n"));
                expected.push((line, format!("u{i}@x.example")));
                line += 1;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.csv");
        std::fs::write(&path, &text).unwrap();
        let mut t = Table::open(&path).unwrap();
        assert_eq!(t.delimiter(), b';');
        assert_eq!(all_rows(&mut t, 0).unwrap(), expected);
        assert_eq!(t.finish().unwrap(), crate::plan::precondition::sha256_hex(text.as_bytes()));

        // Stopping early still hashes the whole file.
        let mut t = Table::open(&path).unwrap();
        assert!(t.next_row().unwrap().is_some());
        assert_eq!(t.finish().unwrap(), crate::plan::precondition::sha256_hex(text.as_bytes()));
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = Table::open(Path::new("/nonexistent/x.csv")).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::INPUT);
        assert!(err.to_string().starts_with("/nonexistent/x.csv: cannot read"));
    }
}
