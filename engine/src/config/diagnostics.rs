//! Errors in pipeline files, reported as `file:line:column: reason`, all at once.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Every problem found in a set of pipeline files.
#[derive(Debug, Default, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects problems for one file, turning byte offsets into 1-based line and column.
pub struct Reporter<'a> {
    file: &'a Path,
    text: &'a str,
    found: Vec<(usize, String)>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Self { file, text, found: Vec::new() }
    }

    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let message = message.into();
        // The same error can be reached twice (e.g. a section retried after recovery).
        if !self.found.iter().any(|(at, m)| *at == span.start && *m == message) {
            self.found.push((span.start, message));
        }
    }

    pub fn has_errors(&self) -> bool {
        !self.found.is_empty()
    }

    pub fn finish(mut self) -> Vec<Diagnostic> {
        self.found.sort_by_key(|(at, _)| *at);
        self.found
            .into_iter()
            .map(|(at, message)| {
                let (line, column) = line_column(self.text, at);
                Diagnostic { file: self.file.to_path_buf(), line, column, message }
            })
            .collect()
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 10), (2, 4));
    }
}
