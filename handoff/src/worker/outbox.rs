//! The [`Outbox`]: records the parent's full channel has not taken yet, sent in order once it is
//! writable, and bounded, so a parent that sends and never reads cannot make the worker hold
//! more and more.
//!
//! What would be queued twice is queued once. A READY goes out once however many HELLOs ask
//! for it; a LOAD replaces the one queued (only the newest matters) and goes to the back, after
//! every report it counts. Ids go into a queued record of their type while it has room for
//! them (up to [`MAX_IDS`]): ADOPTED and REJECTED into the latest such record wherever it is
//! (an answer may come earlier than planned; the parent takes answers in any order), CLOSED only
//! into one that no ADOPTED or LOAD follows (a connection's CLOSED comes after its ADOPTED, and
//! after any LOAD that counted it open). So what a stuck parent is owed fills records of 4 096
//! ids instead of piling up one small record per round.
//!
//! Past [`MAX_RECORDS`] or [`MAX_BYTES`] the parent is not reading: [`Outbox::push`] says so,
//! and the link cuts the parent off as if its channel had ended.

use std::collections::VecDeque;

use crate::record::{code, HEADER_LEN, MAX_IDS};

/// Bytes of one REJECTED record of [`MAX_IDS`] ids, the largest record the worker queues (8
/// header bytes and 9 per id).
const FULL_RECORD: usize = HEADER_LEN + 9 * MAX_IDS;

/// Heap bytes the queued records may hold: 64 of the largest records, 2.25 MiB. Ids fill
/// records before new ones are queued, so this holds 262 144 answers or closes in full records
/// (at worst half as many, in records that stopped growing half empty: they grow by doubling),
/// over 100 times the 1 024 unanswered handoffs a parent keeps in flight by default. Only a
/// parent that has read nothing while that many connections were answered or closed gets
/// here; a merely slow one is owed far less.
const MAX_BYTES: usize = 64 * FULL_RECORD;

/// Records queued at most. Ids merge into queued records, so records pile up only where merging
/// must stop (a CLOSED that an ADOPTED or the LOAD follows): about one per 50 ms tick, as the
/// LOAD moves to the back. 1 024 is some 50 seconds of a parent that reads nothing, far beyond
/// the 64 full records [`MAX_BYTES`] allows, and caps the bookkeeping of tiny records.
const MAX_RECORDS: usize = 1024;

/// Encoded records waiting for room in the channel, in the order they go out.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    queue: VecDeque<Vec<u8>>,
    /// Heap bytes the queued records hold (their capacity).
    bytes: usize,
}

/// The outbox went past its bound: the parent is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Overflow {
    /// Records queued.
    pub(super) records: usize,
    /// Heap bytes they hold.
    pub(super) bytes: usize,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records ({} bytes) wait for it, past the worker's bound ({MAX_RECORDS} records, {MAX_BYTES} bytes)",
            self.records, self.bytes
        )
    }
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next record to send.
    pub(super) fn front(&self) -> Option<&[u8]> {
        self.queue.front().map(Vec::as_slice)
    }

    /// Forgets the record [`Outbox::front`] returned: it was sent.
    pub(super) fn pop_front(&mut self) {
        if let Some(sent) = self.queue.pop_front() {
            self.bytes -= sent.capacity();
        }
        if self.queue.is_empty() {
            // A stuck parent's backlog is gone: do not keep its room.
            self.queue.shrink_to(16);
        }
    }

    /// Drops everything (the parent is gone).
    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.queue.shrink_to(16);
        self.bytes = 0;
    }

    /// Queues one encoded record (as [`crate::record::encode`] wrote it) behind the others,
    /// merged with or replacing one already queued where that loses nothing (see the module
    /// docs).
    ///
    /// # Errors
    ///
    /// [`Overflow`] when the outbox now holds more than [`MAX_RECORDS`] records or
    /// [`MAX_BYTES`] bytes. The record is queued all the same; the caller stops sending.
    pub(super) fn push(&mut self, record: &[u8]) -> Result<(), Overflow> {
        let kind = record[3];
        match kind {
            code::READY if self.queue.iter().any(|r| r[3] == code::READY) => return Ok(()),
            code::LOAD => {
                if let Some(i) = self.queue.iter().position(|r| r[3] == code::LOAD) {
                    if let Some(old) = self.queue.remove(i) {
                        self.bytes -= old.capacity();
                    }
                }
            }
            code::ADOPTED | code::REJECTED | code::CLOSED if self.merge(record) => return self.check(),
            _ => {}
        }
        let queued = record.to_vec();
        self.bytes += queued.capacity();
        self.queue.push_back(queued);
        self.check()
    }

    /// Appends the ids of `record` (ADOPTED, REJECTED or CLOSED) to a queued record of its type
    /// that may take them (see the module docs); `false` when there is none.
    fn merge(&mut self, record: &[u8]) -> bool {
        let kind = record[3];
        let adding = ids(record);
        for queued in self.queue.iter_mut().rev() {
            if queued[3] == kind {
                let count = ids(queued) + adding;
                if count > MAX_IDS {
                    return false;
                }
                let before = queued.capacity();
                queued.extend_from_slice(&record[HEADER_LEN..]);
                queued[4..6].copy_from_slice(&(count as u16).to_le_bytes());
                if count == MAX_IDS {
                    // Full: it takes no more, so it keeps no room.
                    queued.shrink_to_fit();
                }
                self.bytes = self.bytes - before + queued.capacity();
                return true;
            }
            if kind == code::CLOSED && (queued[3] == code::ADOPTED || queued[3] == code::LOAD) {
                return false;
            }
        }
        false
    }

    fn check(&self) -> Result<(), Overflow> {
        if self.queue.len() > MAX_RECORDS || self.bytes > MAX_BYTES {
            return Err(Overflow { records: self.queue.len(), bytes: self.bytes });
        }
        Ok(())
    }
}

/// The id count in an encoded record's header.
fn ids(record: &[u8]) -> usize {
    usize::from(u16::from_le_bytes([record[4], record[5]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{self, decode, Load, Reason, Record};

    fn push(outbox: &mut Outbox, rec: &Record) -> Result<(), Overflow> {
        let mut bytes = Vec::new();
        record::encode(rec, &mut bytes);
        outbox.push(&bytes)
    }

    fn contents(outbox: &Outbox) -> Vec<Record> {
        outbox.queue.iter().map(|r| decode(r).expect("a queued record decodes")).collect()
    }

    fn load(open: u32) -> Record {
        Record::Load(Load { open, queued: 0, busy: 0 })
    }

    #[test]
    fn a_ready_is_queued_once_and_the_newest_load_goes_to_the_back() {
        let mut o = Outbox::default();
        push(&mut o, &Record::Ready { pid: 7 }).unwrap();
        push(&mut o, &load(1)).unwrap();
        push(&mut o, &Record::Ready { pid: 7 }).unwrap();
        push(&mut o, &Record::Adopted(vec![1])).unwrap();
        push(&mut o, &load(2)).unwrap();
        assert_eq!(contents(&o), vec![Record::Ready { pid: 7 }, Record::Adopted(vec![1]), load(2)]);
    }

    #[test]
    fn ids_merge_into_queued_records_of_their_type_without_passing_what_must_come_first() {
        let mut o = Outbox::default();
        push(&mut o, &Record::Adopted(vec![1])).unwrap();
        push(&mut o, &Record::Closed(vec![1])).unwrap();
        push(&mut o, &load(0)).unwrap();
        // An answer may come earlier: ADOPTED joins the first record, past CLOSED and LOAD.
        push(&mut o, &Record::Adopted(vec![2])).unwrap();
        push(&mut o, &Record::Rejected(vec![(3, Reason::Refused)])).unwrap();
        push(&mut o, &Record::Rejected(vec![(4, Reason::Draining)])).unwrap();
        // A CLOSED may not pass the LOAD that counted it open, nor an ADOPTED.
        push(&mut o, &Record::Closed(vec![2])).unwrap();
        push(&mut o, &Record::Closed(vec![5])).unwrap();
        assert_eq!(
            contents(&o),
            vec![
                Record::Adopted(vec![1, 2]),
                Record::Closed(vec![1]),
                load(0),
                Record::Rejected(vec![(3, Reason::Refused), (4, Reason::Draining)]),
                Record::Closed(vec![2, 5]),
            ]
        );
        push(&mut o, &Record::Adopted(vec![6])).unwrap();
        push(&mut o, &Record::Closed(vec![6])).unwrap();
        assert_eq!(contents(&o)[0], Record::Adopted(vec![1, 2, 6]));
        assert_eq!(contents(&o)[4], Record::Closed(vec![2, 5, 6]), "the ADOPTED it follows came earlier");
    }

    #[test]
    fn a_full_record_is_not_merged_into() {
        let mut o = Outbox::default();
        let ids: Vec<u64> = (0..MAX_IDS as u64).collect();
        push(&mut o, &Record::Closed(ids[..MAX_IDS - 1].to_vec())).unwrap();
        push(&mut o, &Record::Closed(vec![9_999])).unwrap();
        push(&mut o, &Record::Closed(vec![10_000])).unwrap();
        let queued = contents(&o);
        assert_eq!(queued.len(), 2);
        assert!(matches!(&queued[0], Record::Closed(ids) if ids.len() == MAX_IDS));
        assert_eq!(queued[1], Record::Closed(vec![10_000]));
    }

    #[test]
    fn past_the_bound_push_says_the_parent_is_not_reading_and_the_bytes_are_counted_back() {
        let mut o = Outbox::default();
        let rejected = Record::Rejected((0..MAX_IDS as u64).map(|id| (id, Reason::Draining)).collect());
        let mut pushed = 0;
        let overflow = loop {
            match push(&mut o, &rejected) {
                Ok(()) => pushed += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(pushed, MAX_BYTES / FULL_RECORD);
        assert!(overflow.bytes > MAX_BYTES && overflow.records == pushed + 1);
        while o.front().is_some() {
            o.pop_front();
        }
        assert_eq!(o.bytes, 0);

        // Records that cannot merge: the count bound.
        let mut o = Outbox::default();
        let mut result = Ok(());
        for i in 0..=MAX_RECORDS as u64 {
            push(&mut o, &Record::Adopted(vec![i])).unwrap();
            result = push(&mut o, &Record::Closed(vec![i]));
            if result.is_err() {
                break;
            }
            push(&mut o, &load(0)).unwrap();
        }
        assert!(matches!(result, Err(Overflow { records, .. }) if records == MAX_RECORDS + 1));
    }
}
