//! The SMS Spam Collection as chapter 6 reads and splits it.
//!
//! The book reads the file with `pd.read_csv(sep="\t", header=None)`, whose default
//! quote handling joins lines: a field that starts with `"` runs to the next lone `"`,
//! across line breaks, `""` standing for one quote. [`parse_sms_spam`] does the same,
//! so the counts are the book's (5572 rows: 4825 ham, 747 spam). Balancing and
//! splitting use NumPy's `RandomState`, so the rows are the book's rows too.

use std::path::Path;

use crate::numpy_rng::{RandomState, pandas_sample};

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsExample {
    /// 1 for spam, 0 for ham (the book's mapping).
    pub label: u8,
    /// The message.
    pub text: String,
}

/// Errors reading the collection.
#[derive(Debug, thiserror::Error)]
pub enum SpamDataError {
    /// The file could not be read (the cause follows in the chain).
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A row that is not `ham|spam<TAB>text`.
    #[error("{path}: row {row}: {message}")]
    Format {
        /// The file.
        path: String,
        /// 1-based row number.
        row: usize,
        /// What is wrong.
        message: String,
    },
}

/// Splits `content` into rows of tab-separated fields the way pandas' C parser does
/// with its default `quotechar='"'`.
fn read_tsv(content: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = content.chars().peekable();
    let mut at_field_start = true;
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                in_quotes = true;
                at_field_start = false;
            }
            '\t' => {
                row.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            c => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows.retain(|r| !(r.len() == 1 && r[0].is_empty()));
    rows
}

/// Parses the collection's text (`label<TAB>message` per row).
pub fn parse_sms_spam(content: &str, origin: &str) -> Result<Vec<SmsExample>, SpamDataError> {
    read_tsv(content)
        .into_iter()
        .enumerate()
        .map(|(i, fields)| {
            let error = |message: String| SpamDataError::Format {
                path: origin.to_string(),
                row: i + 1,
                message,
            };
            if fields.len() != 2 {
                return Err(error(format!(
                    "expected 2 tab-separated fields, found {}",
                    fields.len()
                )));
            }
            let label = match fields[0].as_str() {
                "ham" => 0,
                "spam" => 1,
                other => return Err(error(format!("label \"{other}\" is neither ham nor spam"))),
            };
            Ok(SmsExample {
                label,
                text: fields[1].clone(),
            })
        })
        .collect()
}

/// Reads and parses the collection file.
pub fn read_sms_spam(path: &Path) -> Result<Vec<SmsExample>, SpamDataError> {
    let bytes = std::fs::read(path).map_err(|source| SpamDataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let content = String::from_utf8(bytes).map_err(|e| SpamDataError::Format {
        path: path.display().to_string(),
        row: 0,
        message: format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })?;
    parse_sms_spam(&content, &path.display().to_string())
}

/// The book's `create_balanced_dataset`: as many ham messages as there are spam
/// messages, drawn by `sample(n, random_state=seed)`, followed by every spam message.
/// Returns the chosen row indices into `examples`.
pub fn balanced_indices(examples: &[SmsExample], seed: u32) -> Vec<usize> {
    let ham: Vec<usize> = (0..examples.len())
        .filter(|&i| examples[i].label == 0)
        .collect();
    let spam: Vec<usize> = (0..examples.len())
        .filter(|&i| examples[i].label == 1)
        .collect();
    let picked = pandas_sample(ham.len(), spam.len().min(ham.len()), seed);
    picked.into_iter().map(|p| ham[p]).chain(spam).collect()
}

/// Train, validation and test parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Split<T> {
    /// Training part.
    pub train: Vec<T>,
    /// Validation part.
    pub validation: Vec<T>,
    /// Test part (the rest).
    pub test: Vec<T>,
}

/// The book's `random_split`: shuffle with `sample(frac=1, random_state=seed)`, then
/// `int(n * train_frac)` rows for training and `int(n * validation_frac)` for
/// validation; the rest is the test part.
pub fn random_split<T: Clone>(
    items: &[T],
    train_frac: f64,
    validation_frac: f64,
    seed: u32,
) -> Split<T> {
    let order = RandomState::new(seed).permutation(items.len());
    let shuffled: Vec<T> = order.into_iter().map(|i| items[i].clone()).collect();
    let train_end = (items.len() as f64 * train_frac) as usize;
    let validation_end = train_end + (items.len() as f64 * validation_frac) as usize;
    Split {
        train: shuffled[..train_end].to_vec(),
        validation: shuffled[train_end..validation_end].to_vec(),
        test: shuffled[validation_end..].to_vec(),
    }
}

/// The chapter's whole recipe: read, balance (seed 123), split 70/10/20 (seed 123).
pub fn book_split(path: &Path) -> Result<Split<SmsExample>, SpamDataError> {
    let examples = read_sms_spam(path)?;
    let balanced: Vec<SmsExample> = balanced_indices(&examples, 123)
        .into_iter()
        .map(|i| examples[i].clone())
        .collect();
    Ok(random_split(&balanced, 0.7, 0.1, 123))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../datasets/sms_spam_collection/SMSSpamCollection")
    }

    #[test]
    fn parses_like_pandas() {
        let examples = read_sms_spam(&dataset()).unwrap();
        assert_eq!(examples.len(), 5572);
        assert_eq!(examples.iter().filter(|e| e.label == 0).count(), 4825);
        assert_eq!(examples.iter().filter(|e| e.label == 1).count(), 747);
        // The one row whose opening quote swallows the next two lines (pandas' text).
        let merged: Vec<&SmsExample> = examples.iter().filter(|e| e.text.contains('\n')).collect();
        assert_eq!(merged.len(), 1);
        assert!(merged[0].text.starts_with("Keep ur problems in ur heart"));
        assert!(merged[0].text.ends_with(
            "G 9t.. SD..\nham\tYeah, give me a call if you've got a minute\nham\tHI BABE UAWAKE?FEELLIKW SHIT.JUSTFOUND OUT VIA ALETTER THATMUM GOTMARRIED 4thNOV.BEHIND OURBACKS \u{96} FUCKINNICE!SELFISH,DEVIOUSBITCH.ANYWAY,I\u{92}L CALL U\""
        ));
    }

    #[test]
    fn balances_and_splits_like_the_book() {
        let examples = read_sms_spam(&dataset()).unwrap();
        let balanced = balanced_indices(&examples, 123);
        assert_eq!(&balanced[..5], &[4307, 4138, 4831, 4461, 5440]);
        assert_eq!(balanced.len(), 1494);
        let split = book_split(&dataset()).unwrap();
        assert_eq!(
            (split.train.len(), split.validation.len(), split.test.len()),
            (1045, 149, 300)
        );
        assert_eq!(split.train[0].text, "Dude how do you like the buff wind.");
        assert!(
            split.validation[0]
                .text
                .starts_with("Mila, age23, blonde, new in UK.")
        );
        assert_eq!(
            split.test[299].text,
            "Your unique user ID is 1172. For removal send STOP to 87239 customer services 08708034412"
        );
        assert_eq!(split.train.iter().filter(|e| e.label == 1).count(), 517);
    }

    #[test]
    fn bad_rows_are_named() {
        let err = parse_sms_spam("ham\thello\nspamm\tbuy now\n", "x.tsv")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x.tsv: row 2: label \"spamm\" is neither ham nor spam");
        let err = parse_sms_spam("ham hello\n", "x.tsv")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected 2 tab-separated fields, found 1"),
            "{err}"
        );
    }
}
