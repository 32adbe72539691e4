//! Configuration files as read from disk, and errors that point into them.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One configuration error: `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as the user would type it (relative to the project when possible).
    pub file: PathBuf,
    /// 1-based line; 0 when the error concerns the file as a whole.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every configuration error found in one pass, so a user fixes them all at once.
/// Bad configuration exits with code 2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl ConfigErrors {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Ok(v)` when no error was collected.
    pub fn into_result<T>(self, v: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(v)
        } else {
            Err(self)
        }
    }
    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }
}

/// A TOML file's text, kept so errors found after parsing can still name a line.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path shown in messages.
    pub display: PathBuf,
    /// Path on disk.
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// Read a file; `root` makes the displayed path relative to the project.
    pub fn read(path: &Path, root: &Path) -> Result<Self, ConfigError> {
        let display = display_path(path, root);
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            file: display.clone(),
            line: 0,
            col: 0,
            message: format!("cannot read: {e}"),
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let (line, col) = line_col_of(
                &String::from_utf8_lossy(e.as_bytes()),
                e.utf8_error().valid_up_to(),
            );
            ConfigError {
                file: display.clone(),
                line,
                col,
                message: "file is not valid UTF-8".into(),
            }
        })?;
        Ok(SourceFile {
            display,
            path: path.to_owned(),
            text,
        })
    }

    /// Parse the text as TOML into `T`; serde's message keeps its field names and
    /// gains the file, line and column.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str::<T>(&self.text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| line_col_of(&self.text, s.start))
                .unwrap_or((0, 0));
            ConfigError {
                file: self.display.clone(),
                line,
                col,
                message: tidy_toml_message(e.message()),
            }
        })
    }

    /// An error at a byte span of this file.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = line_col_of(&self.text, span.start);
        ConfigError {
            file: self.display.clone(),
            line,
            col,
            message: message.into(),
        }
    }

    /// An error about the file as a whole.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.display.clone(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }
}

/// `path` relative to `root` when it lies inside it.
pub fn display_path(path: &Path, root: &Path) -> PathBuf {
    path.strip_prefix(root)
        .map(|p| p.to_owned())
        .unwrap_or_else(|_| path.to_owned())
}

/// 1-based line and column of a byte offset.
pub fn line_col_of(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// serde writes field names in backticks; messages read better with plain quotes.
fn tidy_toml_message(m: &str) -> String {
    m.trim().replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col_of(t, 0), (1, 1));
        assert_eq!(line_col_of(t, 6), (2, 1));
        assert_eq!(line_col_of(t, 8), (2, 3));
    }
}
