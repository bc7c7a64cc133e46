//! Parsing a quote-free block without the csv crate: its commas and newlines are found eight
//! bytes at a time, and each line is handed on as a [`Plain`] record (field boundaries only, no
//! copy). Used only where the bytes parse exactly as the csv crate would parse them: no `"`,
//! every `\r` followed by `\n`, at most [`PLAIN_FIELDS`] columns in the header.

use super::parsed::Parsed;
use super::{Record, Shape};

/// Fields a quote-free line is split into directly (wider tables go through the csv crate).
pub(super) const PLAIN_FIELDS: usize = 32;

/// A quote-free line without its terminator, split at its commas: field `i` ends at `ends[i]`
/// and (but the first) starts after `ends[i - 1]`. `width` counts every field, also those past
/// [`PLAIN_FIELDS`] (which [`Record::field`] does not give).
pub(super) struct Plain<'a> {
    text: &'a [u8],
    ends: &'a [u32; PLAIN_FIELDS],
    width: usize,
}

impl Record for Plain<'_> {
    #[inline]
    fn width(&self) -> usize {
        self.width
    }
    #[inline]
    fn field(&self, i: usize) -> Option<&[u8]> {
        if i >= self.width || i >= PLAIN_FIELDS {
            return None;
        }
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize + 1,
        };
        self.text.get(start..self.ends[i] as usize)
    }
}

/// Every `\r` in `body` is followed by `\n`: then, without quotes, records are exactly the
/// lines between `\n`s less a trailing `\r` (the csv crate also ends a record at a lone `\r`).
pub(super) fn only_crlf(body: &[u8]) -> bool {
    memchr::memchr_iter(b'\r', body).all(|i| body.get(i + 1) == Some(&b'\n'))
}

/// The bytes of `w` equal to `c`, as the high bit of each byte (exact, unlike the usual
/// zero-byte test: no borrow runs between bytes).
#[inline]
pub(super) fn bytes_equal(w: u64, c: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (u64::from(c) * 0x0101_0101_0101_0101);
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The state of [`parse_plain`] between delimiters.
pub(super) struct PlainLines {
    /// Where the current line starts in the body.
    start: usize,
    /// Its commas so far (the first [`PLAIN_FIELDS`] at `ends`, relative to `start`).
    commas: usize,
    ends: [u32; PLAIN_FIELDS],
    /// The physical line of the current line.
    line: u64,
}

impl PlainLines {
    /// A `,` or `\n` at `i`.
    #[inline]
    fn delimiter(&mut self, shape: &Shape<'_>, body: &[u8], i: usize, out: &mut Parsed) {
        if body[i] == b',' {
            if self.commas < PLAIN_FIELDS {
                // Offsets fit in u32: the caller checked the block's length.
                self.ends[self.commas] = (i - self.start) as u32;
            }
            self.commas += 1;
        } else {
            let text = &body[self.start..i];
            plain_record(shape, text, &mut self.ends, self.commas, self.line, out);
            self.line += 1;
            self.start = i + 1;
            self.commas = 0;
        }
    }
}

/// Parses a quote-free block with no lone `\r` (see [`only_crlf`]) as the csv crate would:
/// blank lines are skipped, a line is a record. Commas and newlines are found eight bytes at a
/// time. `line` is the physical line of `body[0]`.
pub(super) fn parse_plain(shape: &Shape<'_>, body: &[u8], line: u64, out: &mut Parsed) {
    let mut p = PlainLines {
        start: 0,
        commas: 0,
        ends: [0; PLAIN_FIELDS],
        line,
    };
    let mut chunks = body.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let w = u64::from_le_bytes(bytes);
        let mut hits = bytes_equal(w, b',') | bytes_equal(w, b'\n');
        while hits != 0 {
            let i = at + (hits.trailing_zeros() / 8) as usize;
            hits &= hits - 1;
            p.delimiter(shape, body, i, out);
        }
        at += 8;
    }
    for i in at..body.len() {
        if body[i] == b',' || body[i] == b'\n' {
            p.delimiter(shape, body, i, out);
        }
    }
    if p.start < body.len() {
        let text = &body[p.start..];
        plain_record(shape, text, &mut p.ends, p.commas, p.line, out);
    }
}

/// One line of [`parse_plain`] (its terminator excluded), its first `commas` commas at `ends`.
#[inline]
pub(super) fn plain_record(
    shape: &Shape<'_>,
    text: &[u8],
    ends: &mut [u32; PLAIN_FIELDS],
    commas: usize,
    line: u64,
    out: &mut Parsed,
) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.is_empty() {
        return;
    }
    if commas < PLAIN_FIELDS {
        ends[commas] = text.len() as u32;
    }
    let rec = Plain {
        text,
        ends,
        width: commas + 1,
    };
    out.take(shape, &rec, || line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    #[test]
    fn bytes_equal_marks_exactly_the_matching_bytes() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(61);
        let picks = [b',', b'\n', b'\r', 0, 0x80, 0xff, b'-', b'+', 0x2b, 0x2d];
        for _ in 0..20_000 {
            // Words built mostly from bytes next to the delimiters, where borrows would show.
            let bytes: [u8; 8] = std::array::from_fn(|_| {
                if rng.gen_bool(0.5) {
                    picks[rng.gen_range(0..picks.len())]
                } else {
                    rng.gen()
                }
            });
            let w = u64::from_le_bytes(bytes);
            for c in [b',', b'\n'] {
                let expected = bytes
                    .iter()
                    .enumerate()
                    .filter(|&(_, &b)| b == c)
                    .fold(0u64, |m, (i, _)| m | 0x80 << (8 * i));
                assert_eq!(bytes_equal(w, c), expected, "{bytes:?} {c}");
            }
        }
    }
}
