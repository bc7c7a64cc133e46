//! A parsed block of events rows ([`Parsed`]), and the row parser every block worker shares
//! ([`parse_row`]): filled by [`super::plain`] for quote-free text and by [`super::split`]'s
//! csv-crate fallback.

use super::super::fields::{self, Col, Fault};
use super::super::ReadError;
use super::{event_fields, row_error, EventCols, Record, Shape};
use crate::features::vocabulary::KindTally;
use crate::features::{Event, EventTable};

/// One events row, parsed off the table's thread: the user id (validated, or `None` when it is
/// `last`, the previous good row's) and the event. The checks run in the order of [`event_row`],
/// so a bad row fails on the same field (an id the index knows is valid, so validating ids the
/// index may know changes no outcome).
#[inline]
pub(super) fn parse_row<'r, R: Record>(
    rec: &'r R,
    c: &EventCols,
    last: &[u8],
    tally: &mut KindTally,
) -> Result<(Option<&'r str>, Option<Event>), Fault> {
    if rec.width() != c.width {
        return Err(Fault::FieldCount { found: rec.width() });
    }
    let raw = rec.field(c.user).unwrap_or_default();
    let id = if !last.is_empty() && raw == last {
        None
    } else {
        Some(fields::user_id(raw).map_err(Fault::at(Col::UserId))?)
    };
    Ok((id, event_fields(rec, c, tally)?))
}

/// A parsed block: good rows (their events in the columns of `part`, with no users; user ids
/// concatenated in `ids`, row `i`'s ending at `id_ends[i]`, a run of one user's rows sharing
/// one copy) and the errors of bad rows, both in file order. The consumer hands it back to the
/// worker that filled it, which refills it: its columns are allocated once per worker.
#[derive(Default)]
pub(super) struct Parsed {
    pub(super) ids: String,
    pub(super) id_ends: Vec<usize>,
    /// Where the last good row's id starts in `ids`.
    pub(super) last: usize,
    pub(super) part: EventTable,
    pub(super) bad: Vec<ReadError>,
    /// Rows read (good and bad).
    pub(super) rows: u64,
    /// The file offset where the block ends.
    pub(super) end_byte: u64,
    /// An error that ended the block (after `bad`).
    pub(super) fatal: Option<ReadError>,
}

impl Parsed {
    /// Empty, keeping the allocations.
    pub(super) fn clear(&mut self) {
        self.part.clear();
        self.ids.clear();
        self.id_ends.clear();
        self.last = 0;
        self.bad.clear();
        self.rows = 0;
        self.end_byte = 0;
        self.fatal = None;
    }

    /// One row: its event and user id, or the error naming physical line `line()`.
    #[inline]
    pub(super) fn take(
        &mut self,
        shape: &Shape<'_>,
        rec: &impl Record,
        line: impl FnOnce() -> u64,
    ) {
        self.rows += 1;
        let last = self.ids.as_bytes().get(self.last..).unwrap_or_default();
        match parse_row(rec, &shape.cols, last, &mut self.part.kind_tally) {
            // Dropped on purpose (ignored or skipped kind): counted in the tally, no user.
            Ok((_, None)) => {}
            Ok((id, Some(event))) => {
                if let Some(id) = id {
                    self.last = self.ids.len();
                    self.ids.push_str(id);
                }
                self.id_ends.push(self.ids.len());
                self.part.push(0, event);
            }
            Err(fault) => {
                let line = line();
                self.bad.push(row_error(
                    shape.path,
                    &shape.layout,
                    &shape.header,
                    rec,
                    fault,
                    line,
                ));
            }
        }
    }
}
