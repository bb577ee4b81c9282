//! The byte layout of one set's value, with names.
//!
//! A set is one shared-data value: a layout tag, then [`WAYS`] ways, each a fingerprint followed
//! by `cells` bucket states. Every offset is written once, in [`field`], and read through
//! [`SetValue`]'s typed accessors (the shape of smoltcp's `wire` packets): a value is checked
//! for its length once, in [`SetValue::new_checked`], so no accessor can reach outside it.
//!
//! ```text
//! offset 0         8                 8 + way_len             8 + 8 × way_len
//!        [ tag u64 ][ way 0 ][ way 1 ] … [ way 7 ]
//! way:   [ fingerprint u64 ][ cell 0: TAT u128 ] … [ cell cells-1 ]
//! ```
//! All integers are little-endian. A fingerprint of 0 marks an empty way.

use core::ops::Range;

use crate::bucket::Tat;

/// Ways per set: enough that a set is rarely all active, few enough that a set is one small value.
pub const WAYS: usize = 8;

/// The most bucket states one way holds (a tier has at most 8 limits).
pub const MAX_CELLS: usize = 8;

/// Byte ranges of the layout: of the set, then within a way.
pub mod field {
    use core::ops::Range;

    /// A byte range within a value.
    pub type Field = Range<usize>;

    /// The layout tag (`u64`): a value written under another tag is read as empty.
    pub const TAG: Field = 0..8;
    /// Where the first way starts.
    pub const WAYS_START: usize = TAG.end;

    /// Within a way: the owner's fingerprint (`u64`, 0 = empty).
    pub const FINGERPRINT: Field = 0..8;
    /// Within a way: where the cells start.
    pub const CELLS_START: usize = FINGERPRINT.end;
    /// Bytes of one cell: a bucket's theoretical arrival time (`u128`).
    pub const CELL_LEN: usize = 16;
}

/// Which way of a set: always below [`WAYS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Way(u8);

impl Way {
    /// Every way, in order.
    pub fn all() -> impl Iterator<Item = Way> {
        (0..WAYS as u8).map(Way)
    }

    /// The way a fingerprint falls back to when every way is taken.
    pub fn for_fingerprint(fingerprint: u64) -> Way {
        Way((fingerprint % WAYS as u64) as u8)
    }

    fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// Bytes of one way holding `cells` cells.
pub const fn way_len(cells: usize) -> usize {
    field::CELLS_START + field::CELL_LEN * cells
}

/// Bytes of one set's value whose ways hold `cells` cells.
pub const fn set_len(cells: usize) -> usize {
    field::WAYS_START + WAYS * way_len(cells)
}

/// A value that does not have the length its layout needs (torn, or written by another layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrongLength {
    /// The length the layout needs.
    pub expected: usize,
    /// The value's length.
    pub actual: usize,
}

/// One set's value, read (and, over a mutable buffer, written) through its layout.
#[derive(Clone, Debug)]
pub struct SetValue<T> {
    buffer: T,
    cells: usize,
}

impl SetValue<alloc::vec::Vec<u8>> {
    /// An empty set under `tag`, its ways holding `cells` cells (clamped to 1..=[`MAX_CELLS`]).
    pub fn empty(cells: usize, tag: u64) -> SetValue<alloc::vec::Vec<u8>> {
        let cells = cells.clamp(1, MAX_CELLS);
        let mut set = SetValue {
            buffer: alloc::vec![0; set_len(cells)],
            cells,
        };
        set.set_tag(tag);
        set
    }
}

impl<T: AsRef<[u8]>> SetValue<T> {
    /// Views `buffer` as a set whose ways hold `cells` cells (clamped to 1..=[`MAX_CELLS`]).
    ///
    /// # Errors
    /// [`WrongLength`] unless the buffer is exactly [`set_len`]`(cells)` bytes; after this check
    /// every accessor stays inside the buffer.
    pub fn new_checked(buffer: T, cells: usize) -> Result<SetValue<T>, WrongLength> {
        let cells = cells.clamp(1, MAX_CELLS);
        let expected = set_len(cells);
        let actual = buffer.as_ref().len();
        if actual == expected {
            Ok(SetValue { buffer, cells })
        } else {
            Err(WrongLength { expected, actual })
        }
    }

    /// Views `buffer` as a set whose ways hold `cells` cells, without the length check, for a
    /// layout that embeds a set ([`super::budgets`]) and has checked its own length. Accessors
    /// never reach outside the buffer whatever its length (a miss reads as 0, writes nothing).
    pub(super) fn view(buffer: T, cells: usize) -> SetValue<T> {
        SetValue {
            buffer,
            cells: cells.clamp(1, MAX_CELLS),
        }
    }

    /// The cells each way holds.
    pub fn cells(&self) -> usize {
        self.cells
    }

    /// The layout tag.
    pub fn tag(&self) -> u64 {
        self.u64_at(field::TAG)
    }

    /// The fingerprint owning `way` (0: empty).
    pub fn fingerprint(&self, way: Way) -> u64 {
        self.u64_at(self.way_field(way, field::FINGERPRINT))
    }

    /// Cell `cell` of `way` (a cell past [`cells`](Self::cells) reads as a full bucket).
    pub fn cell(&self, way: Way, cell: usize) -> Tat {
        match self.cell_field(way, cell) {
            Some(range) => Tat(self.u128_at(range)),
            None => Tat::default(),
        }
    }

    /// The states of `way` read into `buf`, without allocating (for the idle scan).
    pub fn cells_into<'b>(&self, way: Way, buf: &'b mut [Tat]) -> &'b mut [Tat] {
        for (i, slot) in buf.iter_mut().take(self.cells).enumerate() {
            *slot = self.cell(way, i);
        }
        buf.get_mut(..self.cells).unwrap_or_default()
    }

    /// The underlying bytes.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn way_field(&self, way: Way, within: Range<usize>) -> Range<usize> {
        let base = field::WAYS_START + way.index() * way_len(self.cells);
        base + within.start..base + within.end
    }

    fn cell_field(&self, way: Way, cell: usize) -> Option<Range<usize>> {
        (cell < self.cells).then(|| {
            let start = field::CELLS_START + cell * field::CELL_LEN;
            self.way_field(way, start..start + field::CELL_LEN)
        })
    }

    fn u64_at(&self, range: Range<usize>) -> u64 {
        // In range by `new_checked`; a miss (impossible) would read as 0 rather than panic.
        let mut b = [0u8; 8];
        if let Some(src) = self.buffer.as_ref().get(range) {
            b.copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    }

    fn u128_at(&self, range: Range<usize>) -> u128 {
        let mut b = [0u8; 16];
        if let Some(src) = self.buffer.as_ref().get(range) {
            b.copy_from_slice(src);
        }
        u128::from_le_bytes(b)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SetValue<T> {
    /// Sets the layout tag.
    pub fn set_tag(&mut self, tag: u64) {
        self.put(field::TAG, &tag.to_le_bytes());
    }

    /// Gives `way` to `fingerprint` with these states (missing states are written as full
    /// buckets; states past [`cells`](Self::cells) are ignored).
    pub fn set_way(&mut self, way: Way, fingerprint: u64, states: &[Tat]) {
        self.put(
            self.way_field(way, field::FINGERPRINT),
            &fingerprint.to_le_bytes(),
        );
        for cell in 0..self.cells {
            let tat = states.get(cell).copied().unwrap_or_default();
            if let Some(range) = self.cell_field(way, cell) {
                self.put(range, &tat.0.to_le_bytes());
            }
        }
    }

    fn put(&mut self, range: Range<usize>, bytes: &[u8]) {
        // In range by `new_checked` (see `u64_at`).
        if let Some(dst) = self.buffer.as_mut().get_mut(range) {
            dst.copy_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use alloc::vec;

    #[test]
    fn lengths_follow_the_layout() {
        assert_eq!(way_len(1), 8 + 16);
        assert_eq!(set_len(1), 8 + 8 * 24);
        assert_eq!(set_len(MAX_CELLS), 8 + 8 * (8 + 8 * 16));
    }

    #[test]
    fn a_value_of_another_length_is_refused() {
        let err = SetValue::new_checked(vec![0u8; set_len(2) - 1], 2).unwrap_err();
        assert_eq!(
            err,
            WrongLength {
                expected: set_len(2),
                actual: set_len(2) - 1
            }
        );
        assert!(SetValue::new_checked(vec![0u8; set_len(1)], 2).is_err());
    }

    #[test]
    fn fields_land_at_their_offsets() {
        let mut v = SetValue::new_checked(vec![0u8; set_len(2)], 2).unwrap();
        v.set_tag(0x0102);
        let way = Way::all().nth(3).unwrap();
        v.set_way(way, 0xAB, &[Tat(5), Tat(u128::MAX)]);
        let bytes = v.clone().into_inner();
        assert_eq!(bytes[..8], 0x0102u64.to_le_bytes());
        let base = 8 + 3 * way_len(2);
        assert_eq!(bytes[base..base + 8], 0xABu64.to_le_bytes());
        assert_eq!(bytes[base + 8..base + 24], 5u128.to_le_bytes());
        assert_eq!(bytes[base + 24..base + 40], u128::MAX.to_le_bytes());
        // Everything else is untouched.
        let outside = bytes[8..base].iter().chain(&bytes[base + 40..]);
        assert!(outside.copied().all(|b| b == 0));
        assert_eq!(v.tag(), 0x0102);
        assert_eq!(v.fingerprint(way), 0xAB);
        assert_eq!(v.cell(way, 1), Tat(u128::MAX));
        assert_eq!(v.cell(way, 2), Tat::default(), "past the cells");
    }

    #[test]
    fn missing_states_are_written_as_full_buckets() {
        let mut v = SetValue::new_checked(vec![0xFFu8; set_len(3)], 3).unwrap();
        let way = Way::for_fingerprint(9);
        v.set_way(way, 9, &[Tat(1)]);
        let mut buf = [Tat::default(); MAX_CELLS];
        assert_eq!(v.cells_into(way, &mut buf), &[Tat(1), Tat(0), Tat(0)]);
    }
}
