//! GPT-2's reversible byte ↔ unicode mapping (`bytes_to_unicode` in OpenAI's `encoder.py`).
//!
//! Every byte is mapped to a printable unicode character so that BPE vocabularies can be stored as
//! text (`encoder.json`, `vocab.bpe`). Printable Latin-1 bytes map to themselves; the remaining 68
//! bytes (controls, space, ...) map to U+0100, U+0101, ... in increasing byte order.

use std::sync::OnceLock;

/// The 256 bytes in GPT-2's vocabulary order: ids 0..256 of GPT-2's `encoder.json` are exactly
/// these bytes, in this order (`!` = 0, ..., `Ā` (byte 0) = 188, ..., `Ġ` (space) = 220).
pub fn byte_order() -> &'static [u8; 256] {
    static ORDER: OnceLock<[u8; 256]> = OnceLock::new();
    ORDER.get_or_init(|| {
        let mut order = [0u8; 256];
        let mut n = 0;
        for b in 0..=255u8 {
            if is_printable(b) {
                order[n] = b;
                n += 1;
            }
        }
        for b in 0..=255u8 {
            if !is_printable(b) {
                order[n] = b;
                n += 1;
            }
        }
        order
    })
}

fn is_printable(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
}

/// Byte → unicode character table.
pub fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut extra = 0u32;
        for b in 0..=255u8 {
            table[b as usize] = if is_printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(256 + extra).expect("U+0100..U+0143 are valid chars");
                extra += 1;
                c
            };
        }
        table
    })
}

/// Unicode character → byte (inverse of [`byte_to_char`]); `None` for characters outside the table.
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && is_printable(cp as u8) {
        return Some(cp as u8);
    }
    if (256..256 + 68).contains(&cp) {
        // The 68 non-printable bytes in increasing order.
        let idx = (cp - 256) as usize;
        return Some(byte_order()[188 + idx]);
    }
    None
}

/// Encodes raw bytes as GPT-2's unicode token string.
pub fn bytes_to_token_string(bytes: &[u8]) -> String {
    let table = byte_to_char();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// Decodes GPT-2's unicode token string back to bytes; `None` if a character is not in the table.
pub fn token_string_to_bytes(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection() {
        for b in 0..=255u8 {
            let c = byte_to_char()[b as usize];
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_to_char()[b' ' as usize], 'Ġ');
        assert_eq!(byte_to_char()[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn order_matches_gpt2_ids() {
        let order = byte_order();
        assert_eq!(order[0], b'!');
        assert_eq!(order[188], 0);
        assert_eq!(order[220], b' ');
        assert_eq!(order[198], b'\n');
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..=255u8).collect::<Vec<_>>());
    }

    #[test]
    fn round_trip_strings() {
        let bytes = "héllo \n\t wörld".as_bytes();
        let s = bytes_to_token_string(bytes);
        assert_eq!(token_string_to_bytes(&s).unwrap(), bytes);
    }
}
